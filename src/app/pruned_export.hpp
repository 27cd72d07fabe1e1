// The pruned model a complete checkpoint holds, read for an export: PrunedReader (one tensor at a
// time, digests checked, rounded to the model's dtypes) and the export by some ranks of each node.
// Shared by the prune's own export (prune_run.cpp) and `scalpel export` (export_run.cpp). Private
// to app.
#pragma once
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <utility>

#include "scalpel/app/commands.hpp"
#include "scalpel/app/export.hpp"
#include "scalpel/core/dtype.hpp"
#include "scalpel/core/error.hpp"
#include "scalpel/core/tensor.hpp"
#include "scalpel/dist/comm.hpp"
#include "scalpel/io/checkpoint.hpp"
#include "scalpel/io/hf_checkpoint.hpp"
#include "scalpel/model/spec.hpp"

namespace scalpel::app {

// The pruned tensors of a complete checkpoint, for the export and the summary, read one tensor
// at a time (its digests checked): each export writer reads exactly the tensors of its shards,
// even where a layer's tensors fall in two writers' shards. Tensors the checkpoint holds in
// another dtype than the model's (LLM Surgeon's fp32 states) are rounded to the model's.
class PrunedReader {
 public:
  PrunedReader(const io::Checkpoint& ckpt, const io::HfCheckpoint& src, const model::ModelSpec& spec)
      : ckpt_(ckpt), src_(src) {
    for (std::int64_t layer = 0; layer < spec.layers; ++layer)
      for (const auto& [t, info] : ckpt.layer_entry(layer).tensors) {
        const auto name = src.resolve(spec.layer_prefix(layer) + t);
        if (name.empty())
          SCALPEL_INPUT_ERROR("checkpoint {}: layer {} tensor '{}' is not in the model {}", ckpt.dir().string(), layer,
                              t, src.folder().string());
        where_[name] = {layer, t};
      }
  }
  LazyReplacement lazy() {
    LazyReplacement r;
    for (const auto& [name, w] : where_) r.names.insert(name);
    r.load = [this](const std::string& name) { return load(name); };
    return r;
  }
  // Zeros and entries of every pruned tensor: those an export already loaded are counted then,
  // the others now (a pass over their layers, one at a time).
  std::pair<std::int64_t, std::int64_t> count() {
    for (const auto& [name, w] : where_)
      if (!counted_.count(name)) load(name);
    return counted();
  }
  // Zeros and entries of the tensors loaded so far.
  std::pair<std::int64_t, std::int64_t> counted() const { return {zeros_, total_}; }

 private:
  Tensor load(const std::string& name) {
    Tensor v = read(name);
    if (counted_.insert(name).second) {
      zeros_ += count_zeros(v);
      total_ += v.numel();
    }
    return v;
  }
  Tensor read(const std::string& name) {
    const auto& [layer, t] = where_.at(name);
    Tensor v = ckpt_.read_tensor(layer, t, false).data;
    const auto dtype = src_.info(name).dtype;
    if (v.dtype() == dtype) return v;
    Tensor stored = Tensor::empty(v.shape(), dtype);
    const Tensor f = v.to_f32();
    convert_from_f32(dtype, f.f32(), stored.raw(), static_cast<std::size_t>(f.numel()));
    return stored;
  }
  const io::Checkpoint& ckpt_;
  const io::HfCheckpoint& src_;
  std::map<std::string, std::pair<std::int64_t, std::string>> where_;  // stored name -> (layer, name in it)
  std::set<std::string> counted_;
  std::int64_t zeros_ = 0, total_ = 0;
};

// The export by `per_node` ranks of each node (0: every rank); writer i of W writes shards i,
// i + W, ... Every rank of `world` calls it; returns the size of its split group (W on a writer:
// world rank 0 is always one).
int export_by_writers(const io::HfCheckpoint& src, const LazyReplacement& lazy, const std::filesystem::path& dest,
                      std::int64_t shard_bytes, dist::Comm& world, const NodePlace& place, int per_node);

}  // namespace scalpel::app
