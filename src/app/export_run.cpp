// `scalpel export`: a complete checkpoint (a prune's layers, or an LLM Surgeon state once every
// shot is committed) written as a Hugging Face folder beside the model it was made from, shared
// out over the ranks as the prune's own export is. Every rank checks the inputs alike.
#include <filesystem>
#include <optional>
#include <string>

#include "scalpel/app/commands.hpp"
#include "scalpel/app/export.hpp"
#include "scalpel/core/error.hpp"
#include "scalpel/core/paths.hpp"
#include "scalpel/io/checkpoint.hpp"
#include "scalpel/io/hf_checkpoint.hpp"
#include "scalpel/io/manifest.hpp"
#include "scalpel/io/shot_checkpoint.hpp"
#include "scalpel/model/spec.hpp"
#include "pruned_export.hpp"
#include "root_work.hpp"

namespace fs = std::filesystem;

namespace scalpel::app {

int export_by_writers(const io::HfCheckpoint& src, const LazyReplacement& lazy, const fs::path& dest,
                      std::int64_t shard_bytes, dist::Comm& world, const NodePlace& place, int per_node) {
  const bool writer = per_node == 0 || place.local_rank < per_node;
  const auto writers = world.split(writer ? 0 : 1, world.rank());
  if (writer) export_hf_folder(src, lazy, dest, shard_bytes, writers.get());
  return writers->size();
}

namespace {

// True when `inner` is `outer` or lies inside it, both resolved (links, "..") as far as they exist.
bool path_inside(const fs::path& outer, const fs::path& inner) {
  std::error_code eo, ei;
  const auto o = fs::weakly_canonical(outer, eo), i = fs::weakly_canonical(inner, ei);
  if (eo || ei || o.empty()) return false;  // not resolvable: the export's own checks decide
  return path_within(o, i);
}

// What an export reads, every rank alike: the checkpoint, the model it was made from and its spec.
struct ExportSource {
  std::optional<io::Checkpoint> ckpt;
  std::string model;
  std::optional<io::HfCheckpoint> src;
  std::optional<model::ModelSpec> spec;
};

// Opens and checks the export's inputs; an input Error names the option or file at fault.
void open_export(const ExportRequest& req, ExportSource& in) {
  // An LLM Surgeon state: the last shot's checkpoint, once every shot is committed; its fp32
  // tensors are rounded to the model's dtypes below, as the prune's own export rounds them.
  if (req.shard_mb < 1) SCALPEL_INPUT_ERROR("--shard-mb: {} must be >= 1 (MB per output shard)", req.shard_mb);
  if (req.writers_per_node < 0)
    SCALPEL_INPUT_ERROR("--writers: {} is negative (ranks per node writing shards; 0 = every rank)",
                        req.writers_per_node);
  if (req.out.empty()) SCALPEL_INPUT_ERROR("--out: the path is empty; name the folder to export to");
  if (path_inside(req.checkpoint, req.out))
    SCALPEL_INPUT_ERROR("export to {}: it is or lies inside the checkpoint folder {}; name a folder beside it",
                        req.out, req.checkpoint);
  if (io::ShotCheckpoint::is_shot_folder(req.checkpoint))
    SCALPEL_INPUT_ERROR("checkpoint {}: one shot of an LLM Surgeon state, not the pruned model; export the state "
                        "(the folder above it) once every shot is committed", req.checkpoint);
  const auto open_checkpoint = [&] {
    if (!io::ShotCheckpoint::is_shot_state(req.checkpoint)) return io::Checkpoint::open_read(req.checkpoint);
    const auto state = io::ShotCheckpoint::open_read(req.checkpoint);
    if (!state.complete())
      SCALPEL_INPUT_ERROR("checkpoint {}: not complete ({} of {} shots committed); finish the prune first (rerun "
                          "the same scalpel prune command)", req.checkpoint, state.last_shot(), state.total_shots());
    return state.last();
  };
  const auto& ckpt = in.ckpt.emplace(open_checkpoint());
  if (!ckpt.complete())
    SCALPEL_INPUT_ERROR("checkpoint {}: not complete ({} of {} layers committed); finish the prune first (rerun "
                        "the same scalpel prune command)",
                        req.checkpoint, ckpt.committed_count(), ckpt.num_layers());
  const std::string& model = in.model =
      req.model.empty() ? ckpt.manifest().at("model").at("name").get<std::string>() : req.model;
  // The manifest holds the model's path as the prune was given it (relative to where it ran).
  std::error_code ec;
  if (req.model.empty() && !fs::is_directory(model, ec))
    SCALPEL_INPUT_ERROR("checkpoint {}: its model '{}' (the path the prune was given{}) is not a folder {}; name it "
                        "with --model", req.checkpoint, model,
                        fs::path(model).is_relative() ? ", relative to the folder it ran in" : "",
                        fs::path(model).is_relative() ? "from here" : "any more");
  const auto& src = in.src.emplace(model);
  const auto& made_from = ckpt.manifest().at("model");
  if (const auto fp = io::model_fingerprint(model);
      !io::kept_model_matches(made_from.at("fingerprint").get<std::string>(), fp, model, req.checkpoint))
    SCALPEL_INPUT_ERROR("checkpoint {} was made from another model than {}: the fingerprint of its config.json, "
                        "weight file headers and sampled weights is {}, the checkpoint's model ({} as the prune read "
                        "it) had {}",
                        req.checkpoint, model, fp, made_from.at("name").get<std::string>(),
                        made_from.at("fingerprint").get<std::string>());
  in.spec.emplace(model_spec(src));
}

}  // namespace

int run_export(const ExportRequest& req, dist::Comm& world, const NodePlace& place) {
  // Every rank checks the same files: a refusal is printed once and ends all of them.
  ExportSource in;
  detail::on_every_rank(world, [&] { open_export(req, in); });
  const auto& ckpt = *in.ckpt;
  const auto& model = in.model;
  const auto& src = *in.src;
  const auto& spec = *in.spec;
  PrunedReader reader(ckpt, src, spec);
  const auto lazy = reader.lazy();
  const int writers = export_by_writers(src, lazy, req.out, req.shard_mb << 20, world, place, req.writers_per_node);
  world.barrier();  // the folder is in place before any rank reports
  if (world.is_root())
    fmt::print("exported {} pruned tensors of {} to {} ({} writing rank{})\n", lazy.names.size(), model, req.out,
               writers, writers == 1 ? "" : "s");
  return kExitOk;
}

}  // namespace scalpel::app
