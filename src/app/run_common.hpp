// Services shared by the kinds of prune run (the layer-by-layer driver of prune_run.cpp and LLM
// Surgeon's whole-model shots of surgeon_run.cpp): calibration windows and their split over the
// data group, the checkpoint identity of a run, and the stored-dtype rounding. Private to app.
#pragma once
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "scalpel/app/commands.hpp"
#include "scalpel/app/config.hpp"
#include "scalpel/app/progress.hpp"
#include "scalpel/backend/backend.hpp"
#include "scalpel/dist/comm.hpp"
#include "scalpel/io/hf_checkpoint.hpp"
#include "scalpel/model/spec.hpp"
#include "scalpel/text/tokenizer.hpp"

namespace scalpel::app {

class Watchdog;

// The calibration windows of a run: nseq windows of seqlen ids, back to back.
struct CalibrationWindows {
  std::vector<std::int32_t> ids;
  std::int64_t nseq = 0, seqlen = 0;
  // Where they come from, for the run's first line: the text, and the offsets file when one
  // replaced the seeded sampling (calibration.nsamples and seed then unused).
  std::string source;
  // The ids of windows [first, first + count).
  std::span<const std::int32_t> windows(std::int64_t first, std::int64_t count) const {
    return std::span<const std::int32_t>(ids).subspan(static_cast<std::size_t>(first * seqlen),
                                                      static_cast<std::size_t>(count * seqlen));
  }
};

// Tokenizes calibration.path and draws (or reads) the windows; input Errors name the key.
CalibrationWindows calibration_windows(const Config& cfg, const model::ModelSpec& spec, const text::Tokenizer& tok);

// The windows of data rank `index` of `ranks`: whole batches of calibration.batch sequences, so
// every batch is the same at any rank count. Input Error when there are fewer batches than ranks.
struct WindowRange {
  std::int64_t begin = 0, end = 0;
  std::int64_t count() const { return end - begin; }
};
WindowRange calibration_shard(std::int64_t nseq, std::int64_t batch, int ranks, int index);

// The checkpoint's config hash: what decides the pruned weights (prune, surgeon and calibration
// sections, determinism, a low-precision forward's dtype), with the calibration windows' digest
// standing for the text and offsets. widest_input: the model's widest linear input (SparseGPT's
// widest factor), which says whether sparsegpt.split_width changes anything.
std::string prune_config_hash(const Config& cfg, const std::vector<std::int32_t>& windows,
                              DType forward = DType::f32, std::int64_t widest_input = 0);
// What that hash covers, flat (io::CheckpointIdentity::settings), for naming what changed.
nlohmann::json prune_config_settings(const Config& cfg, const std::vector<std::int32_t>& windows,
                                     DType forward = DType::f32, std::int64_t widest_input = 0);

// An N:M pattern groups M consecutive input columns of each target: M must divide every target's
// input width (an input error naming the linear; every run and its plan check alike). The
// reference codes take N of a last, partial group of fewer than M columns, so N:M with M - N
// columns left zeroed whole input features of that linear.
void check_nm_widths(const std::vector<model::LinearGroup>& groups, std::int64_t n, std::int64_t m);

// Every decoder layer's tensors present in `src` with the shape config.json implies and a float
// dtype, from the headers alone (no weight is read): an input Error naming the tensor before any
// work, where the run would otherwise meet it at that layer, hours in. The folder form opens the
// model for the check alone (its files' mappings end with it): call it on one rank.
void check_layer_tensors(const io::HfCheckpoint& src, const model::ModelSpec& spec);
void check_layer_tensors(const std::string& folder, const model::ModelSpec& spec);

// `scalpel plan`'s figures for this job (cfg.model's config.json and tensor sizes, `world` ranks):
// the layer-wise plan, or LLM Surgeon's for prune.method: surgeon.
nlohmann::json plan_of_job(const Config& cfg, int world);
// The same for a `scalpel depth` job.
nlohmann::json depth_plan_of_job(const Config& cfg, int world);

// The dtype of the prune's calibration forward on `device`: cuda.forward_dtype (auto: `stored`,
// the checkpoint's weight dtype, when it is 2-byte, else fp32) or cpu.forward_dtype.
DType forward_dtype(const Config& cfg, const std::string& device, DType stored);
// The same for a model folder: `stored` read from its first decoder linear's weight.
DType forward_dtype(const Config& cfg, const io::HfCheckpoint& src, const model::ModelSpec& spec);

// The watchdog through an evaluation: a beat per batch ("evaluate"), suspended while this rank
// waits for the others' share of a set or task.
EvalHeartbeat evaluation_heartbeat(Watchdog& watchdog);

// Where a run may stop: after `done` of `total` units ("layer", "shot"), the last one `after`
// (its index as the metrics name it); total 0 when not known ahead (LaCo's attempts).
struct StopPoint {
  const char* unit;
  std::int64_t done, total, after;
  const char* state = "committed";  // what holds the work done so far, for the log line
};
// Whether any rank received SIGTERM/SIGUSR1 (one all-reduce: every rank agrees); on a stop the
// warning is logged and the "interrupted" record written. Call on every rank, after a commit.
bool stop_requested(dist::Comm& world, const StopPoint& at, const std::string& config_hash, Metrics& metrics);
// The `stop` of a run's evaluate_config: stop_requested between two sets or tasks, recorded as
// "after_evaluation" (how many were done). It keeps a copy of config_hash; world and metrics must
// outlive it.
std::function<bool(std::int64_t, std::int64_t)> evaluation_stop(dist::Comm& world, const std::string& config_hash,
                                                                Metrics& metrics);

// The resume of an evaluation a signal stopped, kept where a run keeps its state: `kept` (read on
// world rank 0) is what `keep` last stored there, {"config_hash": the whole config's hash (eval.*
// included, log.* left out), "done": sets and tasks evaluated}; `keep` (called on rank 0) stores the count after
// each one, and null once the evaluation ends, so a rerun of a finished run evaluates again.
// Without a metrics file the results of a stopped run are nowhere to be found again: no resume.
EvalResume evaluation_resume(const Config& cfg, dist::Comm& world, const nlohmann::json& kept,
                             std::function<void(const nlohmann::json&)> keep);
// The "config_hash" of that record: the config's hash with log.* left out.
std::string evaluation_key(const Config& cfg);

// Before a prune's or depth run's work, on world rank 0 (an error there ends every rank): what the
// run reads and writes at its end, its evaluation inputs (read here, once: read_eval_inputs; the
// result holds them on rank 0 for the run's evaluations) and its export folder
// (check_export_folder), so that a typo does not surface after hours of work.
EvalInputs check_run_end(dist::Comm& world, const Config& cfg, const model::ModelSpec& spec,
                         const text::Tokenizer& tok);

// A layer's vectors (LayerNorm/RMSNorm weights, biases), which no pruner checks, finite: an input
// Error naming the layer and tensor otherwise (a NaN there reached the next linear's Hessian, and
// the error blamed the inputs).
void check_layer_vectors(Backend& be, const model::LayerWeights& w, std::int64_t layer);

// fp32 weight -> the checkpoint's stored dtype, on the host.
Tensor to_storage(Backend& be, const Tensor& w, DType dtype);
// A new copy of a weight in the forward's dtype on the device, from the stored (host or device)
// or fp32 one (the stored bytes as they are when the dtypes agree).
Tensor to_forward(Backend& be, const Tensor& w, DType forward);

}  // namespace scalpel::app
