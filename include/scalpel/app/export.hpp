// Hugging Face export and inspection of pruned models: `scalpel export` writes a folder that
// transformers' from_pretrained loads (original tensor names, dtypes and shapes, dense with
// zeros), and `scalpel inspect` reports the sparsity of any checkpoint or safetensors folder.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>

#include <nlohmann/json.hpp>

#include "scalpel/core/tensor.hpp"

namespace scalpel::io {
class HfCheckpoint;
}
namespace scalpel::dist {
class Comm;
}

namespace scalpel::app {

// Writes `out` from `src`, with the tensors in `replaced` (stored name -> host tensor in the stored
// dtype and shape) taking the place of the originals. model.safetensors, or shards
// model-0000i-of-0000n.safetensors plus model.safetensors.index.json when the total exceeds
// `shard_bytes`; config, generation and tokenizer files are copied. Written into a temporary
// folder renamed into place at the end, so `out` is never left half-written.
void export_hf_folder(const io::HfCheckpoint& src, const std::map<std::string, Tensor>& replaced,
                      const std::filesystem::path& out, std::int64_t shard_bytes);

// Replacement tensors made on demand, for exports larger than memory (a pruned checkpoint read
// layer by layer): the export asks load() for each of `names` once, in output-name order, shard by
// shard, and holds only the tensors of the shard it is writing; load returns the host tensor in
// the source tensor's stored dtype and shape.
struct LazyReplacement {
  std::set<std::string> names;
  std::function<Tensor(const std::string&)> load;
};
// With `comm`, every rank of it calls this together and writes every size()-th shard (a lazy
// load then reads only that rank's tensors); rank 0 writes the index and the other files and
// moves the folder into place, and all return once it is there.
void export_hf_folder(const io::HfCheckpoint& src, const LazyReplacement& replaced, const std::filesystem::path& out,
                      std::int64_t shard_bytes, dist::Comm* comm = nullptr);

// A rewrite of a source folder's tensors and config (depth pruning renumbers and drops decoder
// blocks this way). Each source tensor keeps its name, is renamed (rename returns the new name)
// or dropped (rename returns ""); `replaced` gives new values by output name, in the source
// tensor's stored dtype and shape; `config`, when not null, is written as config.json.
struct ExportRewrite {
  std::function<std::string(const std::string&)> rename;  // empty: every name kept
  std::map<std::string, Tensor> replaced;
  LazyReplacement lazy;  // replacements made on demand (names not in `replaced`)
  nlohmann::json config;
};

// Refuses (input Error) an export folder that would destroy something: a file, the source
// model's folder, a folder holding anything an export does not write (a checkpoint, a run
// folder, other files), or one without the scalpel-export.json every export writes (a model
// saved by other tools has the same file names). A new, empty or earlier export's folder passes;
// exports check it first. A link is judged, and written, as the folder it points to (the link
// stays); a link to nothing is refused.
void check_export_target(const std::filesystem::path& out, const std::filesystem::path& source_model);

// export_hf_folder with a rewrite: the same files, shards and atomic temporary folder, tensors in
// output-name order.
void export_hf_rewritten(const io::HfCheckpoint& src, const ExportRewrite& rw, const std::filesystem::path& out,
                         std::int64_t shard_bytes, dist::Comm* comm = nullptr);

// Zero counts and N:M structure of one weight matrix (any float dtype, host).
struct SparsityStats {
  std::int64_t rows = 0, cols = 0, zeros = 0;
  std::int64_t zero_rows = 0, zero_cols = 0;  // rows and columns entirely zero (structured pruning)
  std::string nm;  // strongest N:M pattern every row satisfies ("2:4", "4:8"), or ""
  double sparsity() const {
    return rows > 0 && cols > 0 ? static_cast<double>(zeros) / static_cast<double>(rows * cols) : 0;
  }
};
SparsityStats sparsity_stats(const Tensor& w);
// The number of entries of w (host, any float dtype) that are zero, +0 or -0.
std::int64_t count_zeros(const Tensor& w);

// Per-tensor and total sparsity of the decoder linears of a Hugging Face folder, as JSON
// ({"tensors": [...], "total": {...}}) and as a table on stdout when `print`.
nlohmann::json inspect_hf_folder(const std::filesystem::path& folder, bool print);

// A pruning checkpoint (a layer checkpoint's manifest.json, or LLM Surgeon's shots.json).
bool is_checkpoint_folder(const std::filesystem::path& dir);
// For a folder that is neither a checkpoint nor a model (no config.json) but holds some, such as
// a run's output.dir: an input Error naming what it holds ("ckpt (a checkpoint), model (a Hugging
// Face model)"); for layer shard files without a manifest.json, in the folder or one below it, an
// input Error saying so; for a depth run's state folder (depth-state.json), an input Error saying
// what it holds and where its model went. Does nothing otherwise, leaving the other errors to the
// readers.
void refuse_run_folder(const std::filesystem::path& dir);
// Where a checkpoint stands (inspect_checkpoint.cpp): model, identity, grid and runs, the layers
// (or shots) committed with their files, bytes and recorded sparsity, complete or where the rerun
// starts and an estimate of the time left; `verify` reads every committed layer back against the
// manifest up to the first mismatch ("verified": {"ok", "error", "exit_code", counts}). As JSON,
// and printed when `print`.
nlohmann::json inspect_checkpoint(const std::filesystem::path& dir, bool verify, bool print);
// The error of a report whose verification failed (naming the file and tensor) and its exit code.
std::optional<std::pair<std::string, int>> verification_failure(const nlohmann::json& report);

}  // namespace scalpel::app
