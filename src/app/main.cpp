// scalpel: the command line. Starts MPI, parses the command and config, runs it, and turns any
// error into one message and a non-zero exit: an error every rank raised alike (a SharedError) is
// printed once by rank 0 and every rank exits with its code; an error on one rank is printed with
// the rank and aborts the whole job, so no rank is left waiting.
#include <CLI/CLI.hpp>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string_view>

#include "scalpel/app/commands.hpp"
#include "scalpel/app/config.hpp"
#include "scalpel/app/export.hpp"
#include "scalpel/app/plan.hpp"
#include "scalpel/app/run_control.hpp"
#include "scalpel/core/error.hpp"
#include "scalpel/core/log.hpp"
#include "scalpel/dist/comm.hpp"
#include "root_work.hpp"
#include "scalpel_commit.hpp"  // SCALPEL_COMMIT, written at build time (cmake/commit_id.cmake)

namespace {

// Splits "config.yaml key=value ..." into the config path and the overrides. A config file whose
// path holds '=' ("runs/lr=0.1/prune.yaml") is the config when it exists.
void split_args(const std::vector<std::string>& args, std::string& config, std::vector<std::string>& overrides) {
  for (const auto& a : args) {
    std::error_code ec;
    if (a.find('=') != std::string::npos && !(config.empty() && std::filesystem::is_regular_file(a, ec))) {
      overrides.push_back(a);
    } else if (config.empty()) {
      config = a;
    } else {
      throw CLI::ValidationError("arguments", "a second config file '" + a + "' (overrides look like key=value)");
    }
  }
}

// A model path as written, for comparing two spellings: without the quotes of a YAML string, "."
// and ".." parts, or trailing separators.
std::string plain_path(std::string s) {
  if (s.size() >= 2 && (s.front() == '"' || s.front() == '\'') && s.back() == s.front()) s = s.substr(1, s.size() - 2);
  auto p = std::filesystem::path(s).lexically_normal();
  while (!p.has_filename() && p.has_relative_path()) p = p.parent_path();
  return p.string();
}

// "PRESET:PATH" options as a YAML list of {preset, path} (single-quoted, quotes doubled).
std::string preset_path_list(const std::string& flag, const std::vector<std::string>& opts) {
  auto quoted = [](std::string s) {
    for (std::size_t p = 0; (p = s.find('\'', p)) != std::string::npos; p += 2) s.insert(p, 1, '\'');
    return "'" + s + "'";
  };
  std::string list = "[";
  for (std::size_t i = 0; i < opts.size(); ++i) {
    const auto c = opts[i].find(':');
    if (c == std::string::npos)
      throw scalpel::Error(scalpel::ErrorKind::input, flag + " '" + opts[i] + "' is not PRESET:PATH", __FILE__,
                           __LINE__);
    list += (i ? ", " : "") + fmt::format("{{preset: {}, path: {}}}", quoted(opts[i].substr(0, c)),
                                          quoted(opts[i].substr(c + 1)));
  }
  return list + "]";
}

// Every option of every command, filled by CLI11.
struct Options {
  std::string log_level = "info";
  bool log_level_given = false;
  bool print_config = false;
  std::string model;  // --model of eval, prune, depth and plan
  std::vector<std::string> eval_args, text, task;
  std::vector<std::string> prune_args;
  bool restart = false;
  std::int64_t restart_from = -1;
  std::vector<std::string> depth_args;
  bool scores_only = false;
  scalpel::app::ExportRequest ex;
  std::string inspect_path;
  bool inspect_json = false, inspect_verify = false;
  std::vector<std::string> plan_args;
  int plan_ranks = 0;
  bool plan_json = false;
  bool plan_depth = false;
  double gflops = 0, net_gbps = 0, read_gbps = 0, write_gbps = 0;
  int ranks_per_node = 0;
  std::string tk_model, tk_input, tk_output, tk_preset = "text", tk_mode = "transformers";
};

// The subcommands that take a config file and overrides.
struct Commands {
  CLI::App *eval, *tokenize, *prune, *depth, *exporter, *inspect, *plan;
};

void add_config_args(CLI::App* cmd, std::vector<std::string>& args, Options& o, const std::string& example) {
  cmd->add_option("args", args, "[config.yaml] [key=value ...] (e.g. " + example + ")");
  cmd->add_flag("--print-config", o.print_config, "print the resolved config and exit");
  cmd->add_option("--model", o.model, "Hugging Face model folder (same as model=DIR)");
}

CLI::App* add_eval(CLI::App& app, Options& o) {
  auto* eval = app.add_subcommand("eval", "perplexity on evaluation texts (SparseGPT/Wanda protocol) and zero-shot "
                                          "task accuracy (lm-evaluation-harness scoring)");
  add_config_args(eval, o.eval_args, o, "eval.seqlen=256");
  eval->add_option("--text", o.text, "PRESET:PATH to evaluate (wikitext2, ptb, c4, text); repeatable; replaces eval.sets")
      ->allow_extra_args(false);
  eval->add_option("--task", o.task,
                   "PRESET:PATH zero-shot task (piqa, hellaswag, arc_easy, arc_challenge, winogrande, boolq, rte, "
                   "openbookqa, copa, lambada, mc); repeatable; replaces eval.tasks")
      ->allow_extra_args(false);
  return eval;
}

CLI::App* add_tokenize(CLI::App& app, Options& o) {
  auto* tokenize = app.add_subcommand("tokenize", "write the token ids of a text (int32) to check them");
  tokenize->add_option("--model", o.tk_model, "model folder holding the tokenizer files")->required();
  tokenize->add_option("--input", o.tk_input, "text file")->required();
  tokenize->add_option("--output", o.tk_output, "output file of int32 ids (a .json with the count goes beside it)")
      ->required();
  tokenize->add_option("--preset", o.tk_preset, "how to read the text: text (as is), wikitext2, ptb, c4");
  tokenize->add_option("--mode", o.tk_mode, "SentencePiece models: transformers (default) or sentencepiece (sp.encode)");
  return tokenize;
}

CLI::App* add_prune(CLI::App& app, Options& o) {
  auto* prune = app.add_subcommand(
      "prune", "prune a model: layer by layer (SparseGPT, Wanda, magnitude; N:M; OWL or sensitivity allocation) or in "
               "whole-model shots (LLM Surgeon: prune.method=surgeon)");
  add_config_args(prune, o.prune_args, o, "prune.sparsity=0.6");
  auto* all = prune->add_flag("--restart", o.restart, "discard the checkpoint in the output folder instead of resuming it");
  prune->add_option("--restart-from", o.restart_from,
                    "discard the checkpoint's layers from LAYER (0-based) on and compute them again, keeping those "
                    "before it (for a shard whose content is damaged)")
      ->type_name("LAYER")
      ->check(CLI::NonNegativeNumber)
      ->excludes(all);
  return prune;
}

CLI::App* add_depth(CLI::App& app, Options& o) {
  auto* depth = app.add_subcommand("depth", "remove whole decoder blocks (ShortGPT's Block Influence, angular "
                                            "distance, LaCo merging, perplexity greedy, the deepest n)");
  add_config_args(depth, o.depth_args, o, "depth.criterion=angular depth.remove=2");
  depth->add_flag("--scores-only", o.scores_only, "print the per-block scores (JSON) and remove nothing");
  depth->add_flag("--restart", o.restart, "discard the progress kept in the output folder instead of resuming it");
  return depth;
}

CLI::App* add_export(CLI::App& app, Options& o) {
  auto* exporter = app.add_subcommand("export", "write the Hugging Face folder of a complete pruning checkpoint");
  exporter->add_option("--checkpoint", o.ex.checkpoint, "checkpoint folder (output.dir/ckpt of a prune)")->required();
  exporter->add_option("--out", o.ex.out, "folder to write (an earlier export there is replaced; a folder holding "
                                          "anything else is refused)")->required();
  exporter->add_option("--model", o.ex.model, "source model folder (default: the one the checkpoint records)");
  exporter->add_option("--shard-mb", o.ex.shard_mb, "shard model.safetensors past this size (MB)");
  exporter->add_option("--writers", o.ex.writers_per_node,
                       "ranks per node writing shards under mpirun (default 0: every rank)");
  return exporter;
}

// A number above zero, with a message that says so (CLI11's own prints its range's bounds).
const CLI::Validator kPositive(
    [](std::string& v) -> std::string {
      try {
        std::size_t used = 0;
        const double x = std::stod(v, &used);
        if (used == v.size() && x > 0 && std::isfinite(x)) return {};
      } catch (const std::exception&) {
      }
      return "must be a number above 0, got '" + v + "'";
    },
    "POSITIVE");

CLI::App* add_inspect(CLI::App& app, Options& o) {
  auto* inspect = app.add_subcommand("inspect", "per-layer and total sparsity of a model folder, or where a pruning "
                                                "checkpoint stands");
  inspect->add_option("path", o.inspect_path, "Hugging Face model folder, or a pruning checkpoint folder "
                                              "(output.dir/ckpt)")->required();
  inspect->add_flag("--json", o.inspect_json, "print JSON instead of a table");
  inspect->add_flag("--verify", o.inspect_verify, "checkpoint: read every committed file back against its digests");
  return inspect;
}

// `scalpel plan`: per-rank memory, I/O, communication and time of a prune job (plan.cpp, plan_surgeon.cpp)
// or a depth job (plan_depth.cpp).
CLI::App* add_plan(CLI::App& app, Options& o) {
  auto* plan = app.add_subcommand("plan", "per-rank memory, I/O, communication and time of a prune or depth job, "
                                          "from config.json alone; refuses a grid that exceeds parallel.memory_gb");
  plan->add_option("args", o.plan_args, "[config.yaml] [key=value ...] (e.g. parallel.stages=8)");
  plan->add_option("--model", o.model, "Hugging Face model folder (same as model=DIR); config.json is enough");
  plan->add_option("--ranks", o.plan_ranks, "ranks of the job (default: the MPI world size; on one process, "
                                            "parallel.stages x parallel.data when parallel.data is set)")
      ->check(kPositive);
  plan->add_flag("--json", o.plan_json, "print JSON (every rank's figures) instead of tables");
  plan->add_flag("--depth", o.plan_depth, "plan a `scalpel depth` job (the default for a config with a depth: "
                                          "section and no prune: section)");
  plan->add_option("--gflops", o.gflops, "FLOP rate per rank in GFLOP/s (default: cpu 95 x threads, cuda 19500)")
      ->check(kPositive);
  plan->add_option("--net-gbps", o.net_gbps, "network GB/s per rank (default 12.5)")->check(kPositive);
  plan->add_option("--read-gbps", o.read_gbps, "checkpoint read GB/s per rank (default 2)")->check(kPositive);
  plan->add_option("--write-gbps", o.write_gbps, "export write GB/s per rank (default 2)")->check(kPositive);
  plan->add_option("--ranks-per-node", o.ranks_per_node,
                   "ranks on each node, for output.export_writers (default: the MPI layout; with --ranks, one node)")
      ->check(kPositive);
  return plan;
}

Commands add_commands(CLI::App& app, Options& o) {
  app.require_subcommand(1);
  // Before or after the command: `scalpel prune cfg.yaml --log-level debug` too.
  app.fallthrough();
  app.add_option("--log-level", o.log_level, "trace, debug, info, warn, error, off");
  Commands c{};
  c.eval = add_eval(app, o);
  c.tokenize = add_tokenize(app, o);
  c.prune = add_prune(app, o);
  c.depth = add_depth(app, o);
  c.exporter = add_export(app, o);
  c.inspect = add_inspect(app, o);
  c.plan = add_plan(app, o);
  return c;
}

// The config of a command from its arguments, --model and the extra overrides its options stand for.
scalpel::app::Config command_config(const std::vector<std::string>& args, const Options& o,
                                    std::vector<std::string> extra = {}) {
  std::string config_path;
  std::vector<std::string> overrides;
  split_args(args, config_path, overrides);
  if (!o.model.empty()) {
    // Both --model and a model= override: the one given last won silently, whichever it was.
    for (const auto& ov : overrides)
      if (ov.rfind("model=", 0) == 0 && plain_path(ov.substr(6)) != plain_path(o.model))
        throw scalpel::Error(scalpel::ErrorKind::input,
                             fmt::format("--model {} and the override {} name two models; give one", o.model, ov),
                             __FILE__, __LINE__);
    overrides.push_back("model=" + o.model);
  }
  overrides.insert(overrides.end(), extra.begin(), extra.end());
  auto cfg = scalpel::app::load_config(config_path, overrides);
  if (o.log_level_given) {
    cfg.log.level = o.log_level;  // --log-level wins over log.level, and --print-config shows it
  } else {
    scalpel::log::set_level(cfg.log.level);
  }
  return cfg;
}

// Runs the chosen command; returns its exit code.
int dispatch(const Commands& c, const Options& o, scalpel::dist::MpiComm& world) {
  using namespace scalpel::app;
  const int rank = world.rank();
  const NodePlace place{world.local_rank(), world.local_size()};
  // A config error (every rank reads the same files and arguments) is printed once.
  const auto agreed_config = [&](auto&& load) { return detail::on_every_rank(world, load); };
  const auto printed = [&](const Config& cfg) {
    if (o.print_config && rank == 0) std::cout << dump_config(cfg, /*readable=*/true);
    return o.print_config;
  };
  if (*c.eval) {
    const auto cfg = agreed_config([&] {
      std::vector<std::string> extra;
      if (!o.text.empty()) extra.push_back("eval.sets=" + preset_path_list("--text", o.text));
      if (!o.task.empty()) extra.push_back("eval.tasks=" + preset_path_list("--task", o.task));
      return command_config(o.eval_args, o, extra);
    });
    return printed(cfg) ? 0 : run_eval(cfg, world, place);
  }
  if (*c.prune) {
    const auto cfg = agreed_config([&] {
      auto cfg = command_config(o.prune_args, o);
      if (o.restart_from >= 0 && cfg.prune.method == "surgeon")
        SCALPEL_INPUT_ERROR("--restart-from discards the layers of a layer-by-layer checkpoint; LLM Surgeon's "
                            "state is one model per shot: resume it as it is, or --restart");
      return cfg;
    });
    if (printed(cfg)) return 0;
    // Two drivers on the same services: LLM Surgeon's whole-model shots, the others layer by layer.
    return cfg.prune.method == "surgeon" ? run_surgeon(cfg, world, place, o.restart)
                                         : run_prune(cfg, world, place, o.restart, o.restart_from);
  }
  if (*c.depth) {
    const auto cfg = agreed_config([&] { return command_config(o.depth_args, o); });
    return printed(cfg) ? 0 : run_depth(cfg, world, place, o.scores_only, o.restart);
  }
  if (*c.plan) {
    const auto cfg = agreed_config([&] { return command_config(o.plan_args, o); });
    int ranks = o.plan_ranks > 0 ? o.plan_ranks : world.size();
    if (o.plan_ranks <= 0 && world.size() == 1 && cfg.parallel.data > 0)
      ranks = cfg.parallel.stages * cfg.parallel.data;
    // Only rank 0 plans and prints; an error there aborts the job (see main's catch blocks).
    PlanInput job;
    job.world = ranks;
    job.gflops = o.gflops;
    job.net_gbps = o.net_gbps;
    job.read_gbps = o.read_gbps;
    job.write_gbps = o.write_gbps;
    job.depth = o.plan_depth || (cfg.gave("depth") && !cfg.gave("prune"));
    // --ranks-per-node, or under mpirun without --ranks the world's own layout; else one node.
    const bool own_world = o.plan_ranks <= 0 && world.size() > 1;
    job.ranks_per_node = o.ranks_per_node > 0 ? o.ranks_per_node : own_world ? world.local_size() : 0;
    return rank == 0 ? run_plan(cfg, job, o.plan_json) : 0;
  }
  if (*c.exporter) return run_export(o.ex, world, place);
  if (*c.inspect) {
    if (rank != 0) return 0;
    refuse_run_folder(o.inspect_path);
    const bool checkpoint = is_checkpoint_folder(o.inspect_path);
    if (o.inspect_verify && !checkpoint)
      SCALPEL_INPUT_ERROR("--verify: {} is not a pruning checkpoint (no manifest.json or shots.json)", o.inspect_path);
    const auto j = checkpoint ? inspect_checkpoint(o.inspect_path, o.inspect_verify, !o.inspect_json)
                              : inspect_hf_folder(o.inspect_path, !o.inspect_json);
    if (o.inspect_json) std::cout << j.dump(2) << '\n';
    if (const auto failed = verification_failure(j)) {  // after the report, which says what did verify
      std::fprintf(stderr, "scalpel: error: %s\n", failed->first.c_str());
      return failed->second;
    }
    return 0;
  }
  if (*c.tokenize) return run_tokenize(o.tk_model, o.tk_input, o.tk_preset, o.tk_output, o.tk_mode, world);
  return 0;
}

// prune and depth: the commands that stop on SIGTERM/SIGUSR1/SIGINT at their next stopping point.
// Their handlers go in before MPI starts, so that a preemption during start-up (MPI, reading the
// model and the texts) stops the run after its first layer (exit 75, requeued) instead of
// killing it (exit 138, not requeued). The command is the first word that is not an option
// (empty when none).
std::string_view command_word(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    if (a == "--log-level") {
      ++i;
      continue;
    }
    if (!a.empty() && a[0] == '-') continue;
    return a;
  }
  return {};
}

}  // namespace

int main(int argc, char** argv) {
  scalpel::app::ensure_passive_wait_policy(argv);
  if (const auto word = command_word(argc, argv); word == "prune" || word == "depth") {
    scalpel::app::install_stop_signals();
    if (word == "depth") scalpel::app::set_interrupt_note(scalpel::app::kDepthInterruptNote);
  }
  scalpel::dist::MpiEnvironment mpi(&argc, &argv);
  auto world = scalpel::dist::MpiComm::world();
  const int rank = world->rank(), size = world->size();
  scalpel::app::set_stop_note_rank(rank, size);

  CLI::App app{"scalpel: one-shot pruning of large language models (SparseGPT, Wanda, magnitude, N:M, LLM Surgeon; "
               "OWL and sensitivity allocation; depth pruning)"};
  app.set_version_flag("--version", fmt::format("scalpel {} (commit {})", SCALPEL_VERSION, SCALPEL_COMMIT));
  Options opts;
  const Commands commands = add_commands(app, opts);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return rank == 0 ? app.exit(e) : 0;  // --help
    // An unknown word where the command goes reads as "a subcommand is required": name it.
    const bool unknown = argc > 1 && argv[1][0] != '-' && app.get_subcommands().empty();
    if (rank == 0)
      std::fprintf(stderr, "scalpel: error: %s\nRun with --help for more information.\n",
                   unknown ? fmt::format("unknown command '{}' (eval, prune, depth, plan, export, inspect, tokenize)",
                                         argv[1]).c_str()
                           : e.what());
    return scalpel::kExitInput;
  }

  opts.log_level_given = app.get_option("--log-level")->count() > 0;
  try {
    scalpel::log::init(rank, size, opts.log_level);
    return dispatch(commands, opts, *world);
  } catch (const CLI::ValidationError& e) {
    if (rank == 0) std::fprintf(stderr, "scalpel: error: %s\n", e.what());
    if (size > 1) world->abort(scalpel::kExitInput);
    return scalpel::kExitInput;
  } catch (const scalpel::SharedError& e) {
    const int code = scalpel::exit_code(e.kind());
    if (e.ranks() == size) {  // every rank raised it: said once, no abort
      if (rank == 0) {
        std::fprintf(stderr, "scalpel: error: %s\n", e.what());
        if (e.kind() == scalpel::ErrorKind::internal) std::fprintf(stderr, "  (raised at %s)\n", e.where().c_str());
      }
      std::fflush(stderr);
      // The others wait for that line: mpirun ends the job when the first rank exits non-zero.
      if (size > 1) world->barrier();
      return code;
    }
    std::fprintf(stderr, "scalpel: error (rank %d): %s\n", rank, e.what());
    world->abort(code);
    return code;
  } catch (const scalpel::Error& e) {
    const int code = scalpel::exit_code(e.kind());
    std::fprintf(stderr, "scalpel: error%s: %s\n", size > 1 ? fmt::format(" (rank {})", rank).c_str() : "", e.what());
    if (e.kind() == scalpel::ErrorKind::internal) std::fprintf(stderr, "  (raised at %s)\n", e.where().c_str());
    if (size > 1) world->abort(code);
    return code;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "scalpel: error (rank %d): %s\n", rank, e.what());
    if (size > 1) world->abort(scalpel::kExitInternal);
    return scalpel::kExitInternal;
  }
}
