// Model: weights on demand, embeddings, the layer walk and the LM head's NLL.
#include "scalpel/model/model.hpp"

#include <algorithm>

#include "scalpel/core/error.hpp"

namespace scalpel::model {

Model::Model(ModelSpec spec, std::shared_ptr<const WeightSource> source, Backend& be, std::size_t cache_bytes)
    : spec_(std::move(spec)), source_(std::move(source)), be_(be), cache_bytes_(cache_bytes) {
  const auto V = spec_.vocab_size, e = spec_.word_embed_proj_dim, d = spec_.hidden;
  embed_tokens_ = load(spec_.embed_tokens_name(), {V, e});
  if (spec_.family == Family::opt) {
    embed_positions_ = load("model.decoder.embed_positions.weight", {spec_.max_positions + spec_.position_offset, d});
    if (e != d) {
      project_in_ = load("model.decoder.project_in.weight", {d, e});
      project_out_ = load("model.decoder.project_out.weight", {e, d});
    }
  }
  if (spec_.final_norm) {
    const auto p = spec_.final_norm_prefix();
    if (spec_.family == Family::llama || spec_.norm_affine) final_w_ = load(p + ".weight", {d});
    if (spec_.family == Family::opt && spec_.norm_affine) final_b_ = load(p + ".bias", {d});
  }
  if (spec_.tie_embeddings) {
    lm_head_ = embed_tokens_;
  } else {
    lm_head_ = load("lm_head.weight", {V, e});
  }
}

Tensor Model::load(const std::string& name, const Shape& expect, const Tensor* staged) {
  Tensor host = staged ? *staged : source_->load(name);
  if (host.shape() != expect)
    SCALPEL_INPUT_ERROR("tensor '{}' has shape {}, but config.json implies {}", name, shape_str(host.shape()),
                        shape_str(expect));
  if (host.dtype() != DType::f32 && host.dtype() != DType::f16 && host.dtype() != DType::bf16 &&
      host.dtype() != DType::f64)
    SCALPEL_INPUT_ERROR("tensor '{}' has dtype {}, expected a float type", name, dtype_name(host.dtype()));
  return be_.upload(host);
}

Tensor Model::load_layer_tensor(const std::string& name, const Shape& expect, const Tensor* staged) {
  // A prefetched copy already on the device in the forward dtype is used as it is (it is a fresh
  // copy, never a view of the file).
  if (staged && staged->device() == be_.device() && staged->dtype() == forward_dtype_ && staged->shape() == expect)
    return *staged;
  if (forward_dtype_ == DType::f32) return load(name, expect, staged);
  const Tensor host = staged ? *staged : source_->load(name);
  if (host.dtype() == forward_dtype_ && host.shape() == expect) return be_.upload_exact(host);
  return as_dtype_on(be_, load(name, expect, &host), forward_dtype_);
}

void Model::set_forward_dtype(DType t) {
  SCALPEL_CHECK(t == DType::f32 || low_precision(t), "forward dtype {}: expected F32, F16 or BF16", dtype_name(t));
  forward_dtype_ = t;
  layers_.clear();
  cached_bytes_ = 0;
}

std::shared_ptr<const LayerWeights> Model::layer_weights(std::int64_t layer) {
  SCALPEL_CHECK(layer >= 0 && layer < spec_.layers, "layer {} of {}", layer, spec_.layers);
  if (auto it = layers_.find(layer); it != layers_.end()) return it->second;
  std::map<std::string, Tensor> staged;
  if (auto it = prefetched_.find(layer); it != prefetched_.end()) {
    auto f = std::move(it->second);
    prefetched_.erase(it);
    staged = f.get();  // rethrows a read error of the background thread
  }
  const auto get = [&](const std::string& name, const Shape& shape) {
    auto it = staged.find(name);
    return load_layer_tensor(name, shape, it != staged.end() ? &it->second : nullptr);
  };
  auto w = std::make_shared<LayerWeights>();
  const auto prefix = spec_.layer_prefix(layer);
  for (const auto& [name, shape] : spec_.layer_tensors(layer)) w->tensors[name.substr(prefix.size())] = get(name, shape);
  if (cached_bytes_ + w->bytes() <= cache_bytes_) {
    cached_bytes_ += w->bytes();
    layers_[layer] = w;
  }
  return w;
}

void Model::prefetch(std::int64_t layer) {
  if (layer < 0 || layer >= spec_.layers || layers_.count(layer) || prefetched_.count(layer)) return;
  std::vector<std::string> names;
  for (const auto& t : spec_.layer_tensors(layer)) names.push_back(t.first);
  if (!uploader_) uploader_ = be_.make_uploader();
  prefetched_[layer] = std::async(std::launch::async, [source = source_, uploader = uploader_, names] {
    std::vector<Tensor> stored;
    for (const auto& n : names) {
      Tensor t = source->load(n);  // a view: the upload reads it
      // float64 travels as the fp32 load() would make of it (no device float64 weights).
      stored.push_back(t.dtype() == DType::f64 ? t.to_f32() : t);
    }
    auto copies = uploader->upload(stored);
    std::map<std::string, Tensor> out;
    for (std::size_t i = 0; i < names.size(); ++i) out[names[i]] = std::move(copies[i]);
    return out;
  });
}

void Model::set_layer_weights(std::int64_t layer, std::shared_ptr<const LayerWeights> w) {
  SCALPEL_CHECK(layer >= 0 && layer < spec_.layers, "layer {} of {}", layer, spec_.layers);
  prefetched_.erase(layer);  // a read under way is waited for and dropped
  if (auto it = layers_.find(layer); it != layers_.end()) cached_bytes_ -= it->second->bytes();
  cached_bytes_ += w->bytes();  // replaced layers stay resident: they exist nowhere else
  layers_[layer] = std::move(w);
}

const RopeTables* Model::rope(std::int64_t seqlen) {
  if (spec_.family != Family::llama) return nullptr;
  auto it = rope_.find(seqlen);
  if (it == rope_.end()) it = rope_.emplace(seqlen, make_rope_tables(be_, spec_, seqlen)).first;
  return &it->second;
}

Tensor Model::embed(std::span<const std::int32_t> ids, std::int64_t batch, std::int64_t seqlen) {
  SCALPEL_CHECK(static_cast<std::int64_t>(ids.size()) == batch * seqlen, "{} ids for {} x {}", ids.size(),
                batch, seqlen);
  if (seqlen > spec_.max_positions)
    SCALPEL_INPUT_ERROR("seqlen {} exceeds the model's max_position_embeddings {}", seqlen, spec_.max_positions);
  const auto n = batch * seqlen, d = spec_.hidden, e = spec_.word_embed_proj_dim;
  Tensor tok = be_.empty({n, e});
  be_.embedding(ids, embed_tokens_, tok);
  // A damaged row would reach every layer's statistics (the first Hessian's error blamed the
  // layer's inputs); the rows read are checked, not the whole table.
  if (!be_.all_finite(tok))
    SCALPEL_INPUT_ERROR("{}: a row of the {} token ids embedded holds NaN or infinite values (the model is damaged)",
                        spec_.embed_tokens_name(), n);
  Tensor x;
  if (e != d) {
    x = be_.empty({n, d});
    be_.linear(tok, project_in_, nullptr, x);
  } else {
    x = tok;
  }
  if (spec_.family == Family::opt) {
    // Learned positions, row p + 2 (no padding, so positions run 0..seqlen-1 in every sequence).
    std::vector<std::int32_t> pos(static_cast<std::size_t>(n));
    for (std::int64_t i = 0; i < n; ++i) pos[i] = static_cast<std::int32_t>(i % seqlen + spec_.position_offset);
    Tensor p = be_.empty({n, d});
    be_.embedding(pos, embed_positions_, p);
    if (!be_.all_finite(p))
      SCALPEL_INPUT_ERROR("model.decoder.embed_positions.weight: a row of positions 0..{} holds NaN or infinite values "
                          "(the model is damaged)", seqlen - 1);
    be_.add(x, p);
  }
  if (forward_dtype_ == DType::f32) return x;
  Tensor low = be_.empty({n, d}, forward_dtype_);
  be_.convert(x, low);
  return low;
}

void Model::layer_forward(std::int64_t layer, Tensor& x, std::int64_t batch, std::int64_t seqlen,
                          const LinearTap* tap, LayerCache* cache) {
  auto w = layer_weights(layer);
  decoder_layer_forward(be_, spec_, *w, x, batch, seqlen, rope(seqlen), tap, cache);
}

void Model::final_logits(const Tensor& low_rows, Tensor& logits) {
  const Tensor rows = as_dtype_on(be_, low_rows, DType::f32);  // the head runs in fp32
  const auto n = rows.size(0), d = spec_.hidden, e = spec_.word_embed_proj_dim;
  Tensor h = be_.empty({n, d});
  if (spec_.final_norm) {
    if (spec_.family == Family::opt)
      be_.layer_norm(rows, final_w_.defined() ? &final_w_ : nullptr, final_b_.defined() ? &final_b_ : nullptr,
                     static_cast<float>(spec_.norm_eps), h);
    else
      be_.rms_norm(rows, final_w_, static_cast<float>(spec_.norm_eps), h);
  } else {
    be_.copy(rows, h);
  }
  if (e != d) {
    Tensor he = be_.empty({n, e});
    be_.linear(h, project_out_, nullptr, he);
    h = he;
  }
  be_.linear(h, lm_head_, nullptr, logits);
}

void Model::head_nll(const Tensor& x, std::span<const std::int32_t> ids, std::int64_t batch, std::int64_t seqlen,
                     std::span<double> out) {
  SCALPEL_CHECK(static_cast<std::int64_t>(out.size()) == batch * (seqlen - 1), "nll out {}", out.size());
  Tensor logits = be_.empty({seqlen - 1, spec_.vocab_size});
  for (std::int64_t b = 0; b < batch; ++b) {
    // One sequence at a time keeps the logits at seqlen x vocab; the last position predicts
    // nothing inside the window.
    final_logits(x.slice_rows(b * seqlen, (b + 1) * seqlen - 1), logits);
    be_.nll(logits, ids.subspan(static_cast<std::size_t>(b * seqlen + 1), static_cast<std::size_t>(seqlen - 1)),
            out.subspan(static_cast<std::size_t>(b * (seqlen - 1)), static_cast<std::size_t>(seqlen - 1)));
  }
}

void Model::head_targets(const Tensor& x, std::int64_t seqlen, std::int64_t b, std::int64_t first,
                         std::span<const std::int32_t> targets, std::span<double> nll,
                         std::span<std::uint8_t> is_argmax) {
  const auto n = static_cast<std::int64_t>(targets.size());
  SCALPEL_CHECK(first >= 0 && first + n <= seqlen && (b + 1) * seqlen <= x.size(0),
                "head_targets: rows {}..{} of sequence {} (seqlen {})", first, first + n, b, seqlen);
  if (n == 0) return;
  Tensor logits = be_.empty({n, spec_.vocab_size});
  final_logits(x.slice_rows(b * seqlen + first, b * seqlen + first + n), logits);
  be_.nll(logits, targets, nll, is_argmax);
}

Tensor Model::hidden(std::span<const std::int32_t> ids, std::int64_t batch, std::int64_t seqlen) {
  Tensor x = embed(ids, batch, seqlen);
  for (std::int64_t l = 0; l < spec_.layers; ++l) layer_forward(l, x, batch, seqlen);
  return x;
}

void Model::window_nll(std::span<const std::int32_t> ids, std::int64_t batch, std::int64_t seqlen,
                       std::span<double> out) {
  head_nll(hidden(ids, batch, seqlen), ids, batch, seqlen, out);
}

}  // namespace scalpel::model

namespace scalpel::model {

void Model::final_backward(const Tensor& rows, const Tensor& dlogits, Tensor& dx) {
  const auto n = rows.size(0), d = spec_.hidden, e = spec_.word_embed_proj_dim;
  Tensor dh = be_.empty({n, e});
  be_.gemm(Trans::no, Trans::no, 1.0f, dlogits, lm_head_, 0.0f, dh);  // logits = h·lm_headᵀ
  if (e != d) {
    Tensor dhd = be_.empty({n, d});
    be_.gemm(Trans::no, Trans::no, 1.0f, dh, project_out_, 0.0f, dhd);
    dh = dhd;
  }
  if (!spec_.final_norm) {
    be_.copy(dh, dx);
  } else if (spec_.family == Family::opt) {
    be_.layer_norm_backward(rows, final_w_.defined() ? &final_w_ : nullptr, static_cast<float>(spec_.norm_eps), dh,
                            dx);
  } else {
    be_.rms_norm_backward(rows, final_w_, static_cast<float>(spec_.norm_eps), dh, dx);
  }
}

std::int64_t Model::layer_cache_bytes(std::int64_t batch, std::int64_t seqlen) const {
  const auto n = batch * seqlen, d = spec_.hidden, qd = spec_.heads * spec_.head_dim,
             kvd = spec_.kv_heads * spec_.head_dim;
  // x_in, norm1, x_mid, norm2 (+ res1, res2 post-norm); q, attn; k, v; probs; ffn_pre, ffn_act (+ ffn_up).
  const std::int64_t floats = n * d * (spec_.pre_norm ? 4 : 6) + 2 * n * qd + 2 * n * kvd +
                              batch * spec_.heads * seqlen * seqlen +
                              n * spec_.ffn * (spec_.family == Family::llama ? 3 : 2);
  return 4 * floats;
}

std::vector<double> Model::backward(std::span<const std::int32_t> ids, std::int64_t batch, std::int64_t seqlen,
                                    const BackwardTaps& taps, bool keep_caches) {
  SCALPEL_CHECK(seqlen >= 2, "a backward pass needs windows of at least 2 tokens, got {}", seqlen);
  SCALPEL_CHECK(forward_dtype_ == DType::f32, "a backward pass needs the fp32 forward (forward dtype {})",
                dtype_name(forward_dtype_));
  const auto L = spec_.layers, d = spec_.hidden, V = spec_.vocab_size;
  const auto in_tap = [&](std::int64_t l) {
    LinearTap t;
    if (taps.input) t = [&taps, l](int g, const std::vector<std::string>& names, const Tensor& xin) {
      taps.input(l, g, names, xin);
    };
    return t;
  };
  // Forward, keeping each layer's input or its whole cache.
  std::vector<Tensor> inputs(static_cast<std::size_t>(L));
  std::vector<LayerCache> caches(static_cast<std::size_t>(keep_caches ? L : 0));
  Tensor x = embed(ids, batch, seqlen);
  for (std::int64_t l = 0; l < L; ++l) {
    if (keep_caches) {
      const LinearTap t = in_tap(l);
      layer_forward(l, x, batch, seqlen, &t, &caches[static_cast<std::size_t>(l)]);
    } else {
      inputs[static_cast<std::size_t>(l)] = clone_on(be_, x);
      layer_forward(l, x, batch, seqlen);
    }
  }
  // The head, one window at a time: dL/dx of the last layer's output, L = Σ_b mean_t nll.
  Tensor dx = be_.empty({batch * seqlen, d});
  Tensor logits = be_.empty({seqlen, V});
  std::vector<double> losses(static_cast<std::size_t>(batch));
  std::vector<std::int32_t> targets(static_cast<std::size_t>(seqlen), -1);
  std::vector<double> row_loss(static_cast<std::size_t>(seqlen)), true_loss(taps.labels ? row_loss.size() : 0);
  for (std::int64_t b = 0; b < batch; ++b) {
    std::copy(ids.begin() + b * seqlen + 1, ids.begin() + (b + 1) * seqlen, targets.begin());
    targets.back() = -1;
    const Tensor rows = x.slice_rows(b * seqlen, (b + 1) * seqlen);
    final_logits(rows, logits);
    std::span<const double> data_loss = row_loss;
    if (taps.labels) {
      // The loss returned is the data's (the true next tokens), taken before the labels are drawn.
      const auto n = static_cast<std::size_t>(seqlen - 1);
      be_.nll(logits.slice_rows(0, seqlen - 1), std::span<const std::int32_t>(targets).first(n),
              std::span<double>(true_loss).first(n));
      data_loss = std::span<const double>(true_loss).first(n);
      taps.labels(b, logits, targets);
    }
    be_.nll_backward(logits, targets, 1.0f / static_cast<float>(seqlen - 1), row_loss);
    double sum = 0;
    for (const double v : data_loss) sum += v;
    losses[static_cast<std::size_t>(b)] = sum / static_cast<double>(seqlen - 1);
    Tensor dxb = dx.slice_rows(b * seqlen, (b + 1) * seqlen);
    final_backward(rows, logits, dxb);
  }
  // Layers in reverse: the kept cache, or the forward recomputed with its cache; then the backward.
  for (std::int64_t l = L - 1; l >= 0; --l) {
    GradTap g_tap;
    if (taps.grad) g_tap = [&](const std::string& name, const Tensor& g) { taps.grad(l, name, g); };
    auto w = layer_weights(l);
    LayerCache recomputed;
    LayerCache& cache = keep_caches ? caches[static_cast<std::size_t>(l)] : recomputed;
    if (!keep_caches) {
      const LinearTap t = in_tap(l);
      decoder_layer_forward(be_, spec_, *w, inputs[static_cast<std::size_t>(l)], batch, seqlen, rope(seqlen), &t,
                            &cache);
      inputs[static_cast<std::size_t>(l)] = Tensor();
    }
    decoder_layer_backward(be_, spec_, *w, cache, dx, batch, seqlen, rope(seqlen), &g_tap);
    cache = LayerCache();
  }
  return losses;
}

}  // namespace scalpel::model
