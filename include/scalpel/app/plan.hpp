// `scalpel plan`: what a prune job will cost per rank for a process grid, from the model's
// config.json alone (no weights or tokenizer needed): memory by term and its peak, bytes read,
// bytes communicated, FLOPs and a time estimate per layer and for the whole job. A job whose peak
// exceeds parallel.memory_gb is refused before it starts (DESIGN.md sections 2, 3 and 7).
#pragma once
#include <cstdint>
#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "scalpel/app/config.hpp"
#include "scalpel/model/spec.hpp"

namespace scalpel::app {

struct PlanInput {
  Config cfg;
  int world = 1;            // ranks of the job: parallel.stages x parallel.data
  // Rates; 0 = the default for cfg.device (cpu: 95 GFLOP/s per thread; cuda: 19500 GFLOP/s, an
  // A100's FP32 without TF32), 12.5 GB/s network, 2 GB/s read per rank.
  double gflops = 0;        // per rank
  double net_gbps = 0;      // per rank, each direction
  double read_gbps = 0;     // per rank
  double write_gbps = 0;    // per rank, the export's writes (0 = 2 GB/s)
  int ranks_per_node = 0;   // how the world sits on nodes, for output.export_writers (0: one node)
  // Stored weights: bytes per parameter (from config.json torch_dtype), and, when a safetensors
  // header was read, the stored bytes of each tensor by its canonical name (as ModelSpec spells
  // it, e.g. "model.decoder.layers.0.fc1.weight"); a tensor not listed counts numel x dtype_bytes.
  int dtype_bytes = 2;
  std::string dtype_name = "float16";
  std::map<std::string, std::int64_t> tensor_bytes;
  std::string model_name;   // for the output only
  bool depth = false;       // plan a `scalpel depth` job (make_depth_plan), not a prune
};

// What the plan needs of a model folder: config.json (required), and the stored tensor sizes
// from model.safetensors or its index when present (optional; never the tensors' data).
struct PlanModel {
  model::ModelSpec spec;
  int dtype_bytes = 4;
  std::string dtype_name;        // torch_dtype, or "float32 (torch_dtype absent)"
  std::map<std::string, std::int64_t> tensor_bytes;  // empty without safetensors files
};
PlanModel load_plan_model(const std::string& folder);

// The plan (a pure function of its inputs): {"model", "job", "grid", "calibration", "rates",
// "per_layer", "ranks": [per rank: memory terms and peak, I/O, communication, FLOPs, seconds],
// "stages", "peak", "export" (null without output.export: writers, shards, the busiest writer's
// bytes (read once and written once), its largest shard and its seconds), "totals", "limit_gb",
// "fits", "warnings" (empty)}. Input Errors name the config key (a grid that does not divide the
// world, more stages than layers, fewer calibration batches than data ranks, calibration.seqlen
// too long).
nlohmann::json make_plan(const model::ModelSpec& spec, const PlanInput& in);

// The plan of an LLM Surgeon job (prune.method: surgeon; plan_surgeon.cpp): memory per rank by term
// and at its peak (same "peak" fields as make_plan's), FLOPs per shot by phase, the run's time.
nlohmann::json make_surgeon_plan(const model::ModelSpec& spec, const PlanInput& in);
void print_surgeon_plan(const nlohmann::json& plan);

// The plan of a `scalpel depth` job (plan_depth.cpp): memory per rank at the criterion's pass, the
// block and head passes over the calibration windows, the read and the export, the run's time.
nlohmann::json make_depth_plan(const model::ModelSpec& spec, const PlanInput& in);
void print_depth_plan(const nlohmann::json& plan);

// Input Error naming 'parallel.memory_gb', the rank and stage with the largest peak, the needed
// and the configured GB, when that peak exceeds cfg.parallel.memory_gb (0 = no limit).
void check_plan_fits(const nlohmann::json& plan, const Config& cfg);

// Prints the plan of cfg.model (a table, or JSON) for the grid and rates of `job` (its world,
// rates and ranks_per_node; its model fields are filled from cfg.model), then refuses (input
// Error, exit code 2) a plan that does not fit parallel.memory_gb.
int run_plan(const Config& cfg, PlanInput job, bool json);

}  // namespace scalpel::app
