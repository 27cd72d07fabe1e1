// Zero-shot tasks on the model, scored as lm-evaluation-harness scores them (text/tasks.hpp has
// the templates, encoding and metrics). Rank 0 reads and encodes the items; every rank receives
// the requests. Requests are sorted by length (longest first, then file order) and cut into
// batches of eval.batch sequences, right-padded (causal attention: padding after a sequence never
// reaches it); the batches are split over the ranks in contiguous blocks, so every forward pass,
// and every log-likelihood, is the same at any rank count. Results go back to rank 0 in batch
// order and are scored there.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "scalpel/app/commands.hpp"
#include "scalpel/app/progress.hpp"
#include "scalpel/core/error.hpp"
#include "scalpel/core/log.hpp"
#include "scalpel/core/timer.hpp"
#include "root_work.hpp"

namespace scalpel::app {
namespace {

// Rank 0's requests (without the items) on every rank; an empty table stands for "rank 0's".
TaskRequests share_requests(const TaskRequests* root, dist::Comm& comm) {
  TaskRequests t;
  if (comm.is_root()) {
    t.offset = root->offset;
    t.ids = root->ids;
    t.cont = root->cont;
    t.line = root->line;
    t.index = root->index;
  }
  detail::broadcast_vector(t.offset, comm);
  detail::broadcast_vector(t.ids, comm);
  detail::broadcast_vector(t.cont, comm);
  detail::broadcast_vector(t.line, comm);
  detail::broadcast_vector(t.index, comm);
  return t;
}

// One batch through the model: per request, the summed log-likelihood of its scored tokens (in
// position order) and whether every one of them is the greedy choice.
void score_batch(model::Model& m, const TaskRequests& t, std::span<const std::int64_t> reqs,
                 std::vector<double>& loglik, std::vector<double>& greedy) {
  std::int64_t len = 1;  // the model reads every id but the last (a request may score nothing)
  for (auto r : reqs) len = std::max(len, t.length(r) - 1);
  const auto B = static_cast<std::int64_t>(reqs.size());
  std::vector<std::int32_t> input(static_cast<std::size_t>(B * len), 0);
  for (std::int64_t b = 0; b < B; ++b) {
    const auto r = reqs[b];
    std::copy(t.ids.begin() + t.offset[r], t.ids.begin() + t.offset[r + 1] - 1, input.begin() + b * len);
  }
  const Tensor x = m.hidden(input, B, len);
  std::vector<double> nll;
  std::vector<std::uint8_t> hit;
  for (std::int64_t b = 0; b < B; ++b) {
    const auto r = reqs[b], n = t.length(r), c = t.cont[r];
    nll.assign(static_cast<std::size_t>(c), 0.0);
    hit.assign(static_cast<std::size_t>(c), 0);
    // Input position p predicts id p + 1: the scored ids n-c .. n-1 come from positions n-c-1 .. n-2.
    m.head_targets(x, len, b, n - c - 1,
                   std::span(t.ids).subspan(static_cast<std::size_t>(t.offset[r] + n - c), static_cast<std::size_t>(c)),
                   nll, hit);
    double ll = 0;
    bool all = true;
    for (std::int64_t i = 0; i < c; ++i) {
      ll -= nll[static_cast<std::size_t>(i)];
      all = all && hit[static_cast<std::size_t>(i)];
    }
    loglik.push_back(ll);
    greedy.push_back(all ? 1.0 : 0.0);
  }
}

}  // namespace

TaskRequests encode_task(const text::Tokenizer& tok, const EvalTask& task, const TaskOptions& opt) {
  TaskRequests t;
  t.docs = text::load_task_docs(text::task_preset(task.preset), task.path, opt.max_items);
  const text::HarnessEncoding enc{opt.add_bos, opt.max_length};
  for (const auto& d : t.docs) {
    for (std::size_t k = 0; k < d.requests.size(); ++k) {
      text::EncodedRequest e;
      try {
        e = text::encode_request(tok, d.requests[k].first, d.requests[k].second, enc);
      } catch (const Error& err) {
        SCALPEL_INPUT_ERROR("{}: line {}: request {}: {}", task.path, d.line, k, err.what());
      }
      t.ids.insert(t.ids.end(), e.ids.begin(), e.ids.end());
      t.offset.push_back(static_cast<std::int64_t>(t.ids.size()));
      t.cont.push_back(e.continuation);
      t.line.push_back(d.line);
      t.index.push_back(static_cast<std::int64_t>(k));
    }
  }
  return t;
}

TaskResult evaluate_task(model::Model& m, const text::Tokenizer* tok, const EvalTask& task, const TaskOptions& opt,
                         dist::Comm& comm, const EvalHeartbeat& heartbeat) {
  TaskRequests requests;
  detail::on_root(comm, [&] { requests = encode_task(*tok, task, opt); });
  return evaluate_encoded_task(m, &requests, task, opt, comm, heartbeat);
}

TaskResult evaluate_encoded_task(model::Model& m, const TaskRequests* requests, const EvalTask& task,
                                 const TaskOptions& opt, dist::Comm& comm, const EvalHeartbeat& heartbeat) {
  Timer timer;
  const auto& preset = text::task_preset(task.preset);
  const TaskRequests t = share_requests(requests, comm);

  // Longest first (the harness's order too: the batch's padding stays small), then file order.
  std::vector<std::int64_t> order(static_cast<std::size_t>(t.size()));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](auto a, auto b) { return t.length(a) > t.length(b); });
  const std::int64_t nbatches = (t.size() + opt.batch - 1) / opt.batch;
  const auto mine = dist::block_range(nbatches, comm.size(), comm.rank());
  std::vector<double> loglik, greedy;
  std::int64_t done = 0, tokens = 0;
  Progress progress(fmt::format("task {}", task.name), mine.end - mine.begin,
                    comm.size() > 1 ? "batches of rank 0" : "batches", opt.progress_seconds, comm.is_root());
  for (std::int64_t b = mine.begin; b < mine.end; ++b) {
    const auto first = b * opt.batch, last = std::min(t.size(), first + opt.batch);
    const std::span<const std::int64_t> reqs(order.data() + first, static_cast<std::size_t>(last - first));
    score_batch(m, t, reqs, loglik, greedy);
    for (auto r : reqs) tokens += t.length(r) - 1;
    progress.update(++done, tokens);
    if (heartbeat.beat) heartbeat.beat();
  }
  progress.finish();
  if (heartbeat.wait && comm.size() > 1) heartbeat.wait();
  for (std::size_t i = 0; i < loglik.size(); ++i) {
    if (std::isfinite(loglik[i])) continue;
    const auto r = order[static_cast<std::size_t>(mine.begin * opt.batch) + i];
    SCALPEL_RUNTIME_ERROR("task {}: {}: line {}: request {} has a non-finite log-likelihood ({}): the weights hold a "
                          "NaN or an infinity (a damaged checkpoint?) or the activations overflow", task.name, task.path,
                          t.line[r], t.index[r], loglik[i]);
  }

  // Batch order is sorted order; rank 0 puts the results back in request order and scores.
  const auto all_ll = comm.gatherv(loglik, 0), all_greedy = comm.gatherv(greedy, 0);
  std::vector<double> total_tokens{static_cast<double>(tokens)};
  comm.allreduce_sum(total_tokens);
  if (heartbeat.beat) heartbeat.beat();  // the countdown again, for what comes before the next task's batches
  TaskResult res;
  res.name = task.name;
  res.preset = task.preset;
  res.path = task.path;
  res.requests = t.size();
  res.tokens = static_cast<std::int64_t>(total_tokens[0]);
  if (comm.is_root()) {
    std::vector<double> ll(order.size());
    std::vector<std::uint8_t> gr(order.size());
    for (std::size_t i = 0; i < order.size(); ++i) {
      ll[static_cast<std::size_t>(order[i])] = all_ll[i];
      gr[static_cast<std::size_t>(order[i])] = all_greedy[i] != 0.0;
    }
    res.scores = text::score_task(preset, requests->docs, ll, gr);
    res.loglik = std::move(ll);
  }
  res.seconds = timer.seconds();
  return res;
}

}  // namespace scalpel::app
