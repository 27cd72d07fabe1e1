// The scalpel commands. Each returns the process exit code; errors are thrown as scalpel::Error
// and turned into a message and exit code by main().
#pragma once
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "scalpel/app/config.hpp"
#include "scalpel/app/progress.hpp"
#include "scalpel/dist/comm.hpp"
#include "scalpel/model/model.hpp"
#include "scalpel/text/tasks.hpp"
#include "scalpel/text/tokenizer.hpp"

namespace scalpel::io {
class HfCheckpoint;
}

namespace scalpel::app {

// Result of evaluating one text: what `scalpel eval` prints and logs.
struct EvalResult {
  std::string name;
  std::int64_t tokens = 0;   // tokens in the tokenized text
  std::int64_t windows = 0;  // windows evaluated
  std::int64_t seqlen = 0;
  double mean_nll = 0, ppl = 0, seconds = 0;
};

// Result of one zero-shot task (scores on rank 0 only).
struct TaskResult {
  std::string name, preset, path;
  text::TaskScores scores;
  std::vector<double> loglik;  // per request, in file order (rank 0)
  std::int64_t requests = 0, tokens = 0;
  double seconds = 0;
};

struct TaskOptions {
  std::int64_t batch = 1;         // sequences per forward pass
  std::int64_t max_items = 0;     // 0 = all
  bool add_bos = false;
  std::int64_t max_length = 2048;  // the model's context
  double progress_seconds = 5;
};

// A task file's items and every request encoded as the evaluation reads them: request r is
// ids[offset[r] .. offset[r+1]), its last cont[r] ids scored; it is request index[r] of the item on
// file line line[r].
struct TaskRequests {
  std::vector<text::TaskDoc> docs;
  std::vector<std::int64_t> offset{0};
  std::vector<std::int32_t> ids;
  std::vector<std::int64_t> cont, line, index;
  std::int64_t size() const { return static_cast<std::int64_t>(cont.size()); }
  std::int64_t length(std::int64_t r) const { return offset[r + 1] - offset[r]; }
};

// The prune's watchdog as an evaluation keeps it: `beat` after every batch of windows or requests,
// `wait` when this rank's share is done and it waits for the other ranks' (the countdown stops
// until the next beat: a slower rank, such as the first, which holds a task's longest requests,
// is not a hung one). Either may be empty.
struct EvalHeartbeat {
  std::function<void()> beat, wait;
};

// Reads and encodes a task file (at most opt.max_items items): input Error naming the file, line
// and request for an invalid item or a request that cannot be encoded (a context that is only
// whitespace, a continuation longer than the model's context).
TaskRequests encode_task(const text::Tokenizer& tok, const EvalTask& task, const TaskOptions& opt);

// One zero-shot task, as lm-evaluation-harness scores it (see eval_tasks.cpp), from the requests
// rank 0 holds (`requests` is read on rank 0 only). The result does not depend on the rank count.
TaskResult evaluate_encoded_task(model::Model& m, const TaskRequests* requests, const EvalTask& task,
                                 const TaskOptions& opt, dist::Comm& comm, const EvalHeartbeat& heartbeat = {});
// The same, rank 0 reading and encoding the file with `tok` (needed on rank 0 only).
TaskResult evaluate_task(model::Model& m, const text::Tokenizer* tok, const EvalTask& task, const TaskOptions& opt,
                         dist::Comm& comm, const EvalHeartbeat& heartbeat = {});

// What evaluate_config reads, read once: each eval.sets text as ids (cut to the preset's token
// limit: c4's 256 windows) and each eval.tasks file encoded, in config order. A run reads them on rank 0 before any work (input Error for a file
// that is missing or invalid, a text shorter than one window of eval.seqlen, a request that cannot
// be encoded) and evaluates from them at its end, so an input edited or removed meanwhile changes
// nothing and a big text is tokenized once however often the run evaluates.
struct EvalInputs {
  std::vector<std::vector<std::int32_t>> sets;
  std::vector<TaskRequests> tasks;
};
EvalInputs read_eval_inputs(const Config& cfg, const model::ModelSpec& spec, const text::Tokenizer& tok);
// Before any work: output.dir is not a file, and the export's folder (output.dir/output.export),
// when there is one, is new, empty or an earlier export (check_export_target), so a run does not
// fail, or destroy a folder, at its end.
void check_export_folder(const Config& cfg);

// Where an evaluation stopped by a signal left off: `skip` sets and tasks (in config order, sets
// first) already evaluated, with their records in the metrics, are not repeated; `done`, when
// set, is called on rank 0 with the count evaluated after each one (the prune keeps it in its
// checkpoint). Every rank passes the same skip.
struct EvalResume {
  std::int64_t skip = 0;
  std::function<void(std::int64_t)> done;
};

// Every eval.sets text and eval.tasks task of `cfg` on `m`, from `inputs` (read_eval_inputs of
// the same sets and tasks; a config may leave out its trailing tasks, on rank 0 only; empty
// elsewhere): a line each on stdout and a metrics record each (rank 0), the records carrying
// `extra` (e.g. {"pruned": true}).
// `stop`, called on every rank between two sets or tasks with (done, total), ends the evaluation
// when it returns true (a signal: the prune's runs stop there); returns false then, else true.
bool evaluate_config(model::Model& m, const EvalInputs& inputs, const Config& cfg, dist::Comm& comm,
                     Metrics& metrics, const nlohmann::json& extra, const EvalHeartbeat& heartbeat = {},
                     const std::function<bool(std::int64_t, std::int64_t)>& stop = {},
                     const EvalResume& resume = {});

// Adapts a checkpoint folder to the model's WeightSource.
std::shared_ptr<model::WeightSource> checkpoint_source(std::shared_ptr<const io::HfCheckpoint> ckpt);

// Perplexity of `ids` with the SparseGPT/Wanda protocol: nsamples = numel / seqlen windows, mean
// NLL over every predicted position, exp. The windows are split across the ranks of `comm` and the
// per-window sums are combined in window order, so the result does not depend on the rank count.
// `heartbeat`: the prune's watchdog (see EvalHeartbeat).
EvalResult evaluate_ids(model::Model& m, const std::vector<std::int32_t>& ids, std::int64_t seqlen,
                        std::int64_t batch, std::int64_t max_windows, dist::Comm& comm,
                        const std::string& name, double progress_seconds, const EvalHeartbeat& heartbeat = {});

// The model folder cfg.model (an input Error when the config names none).
std::shared_ptr<const io::HfCheckpoint> open_model(const Config& cfg);
// The decoder's shape from the folder's config.json (an input Error naming that file when it is
// not a supported model).
model::ModelSpec model_spec(const io::HfCheckpoint& src);

// The tokenizer of cfg.model with cfg.tokenizer.mode.
std::unique_ptr<text::Tokenizer> make_tokenizer(const Config& cfg);
text::TokenizerMode tokenizer_mode(const std::string& mode);

// Threads per rank: the configured number, or the node's cores divided by the ranks on it.
int threads_per_rank(int configured, int local_ranks);

// Where this rank sits on its node: its index among the node's ranks (which GPU it takes) and
// how many ranks share the node (how many cores it gets).
struct NodePlace {
  int local_rank = 0, local_ranks = 1;
};
// The backend of `cfg.device` for this rank: threads, GPU and TF32 settings.
std::unique_ptr<Backend> make_rank_backend(const Config& cfg, const NodePlace& place);

int run_eval(const Config& cfg, dist::Comm& comm, const NodePlace& place);
// The layer-by-layer prune with checkpoint, resume, export and evaluation (see prune_run.cpp).
// restart: discard an existing checkpoint in the output folder instead of resuming it;
// restart_from >= 0: discard its layers from that one on (io::CheckpointOptions::restart_from).
int run_prune(const Config& cfg, dist::Comm& comm, const NodePlace& place, bool restart,
              std::int64_t restart_from = -1);
// LLM Surgeon's whole-model shots (prune.method: surgeon; see surgeon_run.cpp), with the same
// checkpoint, resume, export and evaluation services; `scalpel prune` runs it for such configs.
int run_surgeon(const Config& cfg, dist::Comm& comm, const NodePlace& place, bool restart);
// `scalpel depth`: removes whole decoder blocks by depth.criterion (bi, angular, laco, ppl), writes
// the renumbered export and evaluates it (see depth_run.cpp). scores_only: print the per-block
// scores, remove and write nothing but the metrics record (and the kept progress). restart:
// discard the progress kept in the output folder instead of going on from it.
int run_depth(const Config& cfg, dist::Comm& comm, const NodePlace& place, bool scores_only, bool restart = false);
// `scalpel export`: the Hugging Face folder of a complete checkpoint.
struct ExportRequest {
  std::string checkpoint, out;
  std::string model;          // empty: the source model the checkpoint records
  std::int64_t shard_mb = 5000;
  int writers_per_node = 0;   // ranks per node writing shards; 0: every rank
};
// Writes the export with the ranks of `comm` sharing its shards (writer i of W writes shards
// i, i + W, ...; rank 0 the index, config and tokenizer files); one rank writes it all.
int run_export(const ExportRequest& req, dist::Comm& comm, const NodePlace& place);
int run_tokenize(const std::string& model, const std::string& input, const std::string& preset,
                 const std::string& output, const std::string& mode, dist::Comm& comm);

}  // namespace scalpel::app
