// scalpel: the command line. Starts MPI, parses the command and config, runs it, and turns any
// error into one message (with the rank) and a non-zero exit; under MPI an error on one rank
// aborts the whole job so no rank is left waiting.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <iostream>

#include "scalpel/app/commands.hpp"
#include "scalpel/app/config.hpp"
#include "scalpel/app/export.hpp"
#include "scalpel/app/plan.hpp"
#include "scalpel/app/run_control.hpp"
#include "scalpel/core/error.hpp"
#include "scalpel/core/log.hpp"
#include "scalpel/dist/comm.hpp"

namespace {

int exit_code(scalpel::ErrorKind k) {
  switch (k) {
    case scalpel::ErrorKind::input: return scalpel::kExitInput;
    case scalpel::ErrorKind::runtime: return scalpel::kExitRuntime;
    case scalpel::ErrorKind::internal: return scalpel::kExitInternal;
  }
  return scalpel::kExitInternal;
}

// Splits "config.yaml key=value ..." into the config path and the overrides.
void split_args(const std::vector<std::string>& args, std::string& config, std::vector<std::string>& overrides) {
  for (const auto& a : args) {
    if (a.find('=') != std::string::npos) {
      overrides.push_back(a);
    } else if (config.empty()) {
      config = a;
    } else {
      throw CLI::ValidationError("arguments", "a second config file '" + a + "' (overrides look like key=value)");
    }
  }
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

}  // namespace

int main(int argc, char** argv) {
  scalpel::app::ensure_passive_wait_policy(argv);
  scalpel::dist::MpiEnvironment mpi(&argc, &argv);
  auto world = scalpel::dist::MpiComm::world();
  const int rank = world->rank(), size = world->size();

  CLI::App app{"scalpel: one-shot pruning of large language models (SparseGPT, Wanda, magnitude, N:M)"};
  app.require_subcommand(1);
  std::string log_level = "info";
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error, off");

  auto* eval = app.add_subcommand("eval", "perplexity on evaluation texts (SparseGPT/Wanda protocol) and zero-shot "
                                          "task accuracy (lm-evaluation-harness scoring)");
  std::vector<std::string> eval_args;
  bool print_config = false;
  std::string model_opt;
  std::vector<std::string> text_opts, task_opts;
  eval->add_option("args", eval_args, "[config.yaml] [key=value ...] (e.g. eval.seqlen=256)");
  eval->add_flag("--print-config", print_config, "print the resolved config and exit");
  eval->add_option("--model", model_opt, "Hugging Face model folder (same as model=DIR)");
  eval->add_option("--text", text_opts, "PRESET:PATH to evaluate (wikitext2, ptb, c4, text); repeatable; replaces eval.sets")
      ->allow_extra_args(false);
  eval->add_option("--task", task_opts,
                   "PRESET:PATH zero-shot task (piqa, hellaswag, arc_easy, arc_challenge, winogrande, boolq, rte, "
                   "openbookqa, copa, lambada, mc); repeatable; replaces eval.tasks")
      ->allow_extra_args(false);

  auto* tokenize = app.add_subcommand("tokenize", "write the token ids of a text (int32) to check them");
  std::string tk_model, tk_input, tk_output, tk_preset = "text", tk_mode = "transformers";
  tokenize->add_option("--model", tk_model, "model folder holding the tokenizer files")->required();
  tokenize->add_option("--input", tk_input, "text file")->required();
  tokenize->add_option("--output", tk_output, "output file of int32 ids (a .json with the count goes beside it)")->required();
  tokenize->add_option("--preset", tk_preset, "how to read the text: text (as is), wikitext2, ptb, c4");
  tokenize->add_option("--mode", tk_mode, "SentencePiece models: transformers (default) or sentencepiece (sp.encode)");

  auto* prune = app.add_subcommand("prune", "prune a model layer by layer (SparseGPT, Wanda, magnitude; N:M)");
  std::vector<std::string> prune_args;
  bool prune_restart = false;
  prune->add_option("args", prune_args, "[config.yaml] [key=value ...] (e.g. prune.sparsity=0.6)");
  prune->add_flag("--print-config", print_config, "print the resolved config and exit");
  prune->add_option("--model", model_opt, "Hugging Face model folder (same as model=DIR)");
  prune->add_flag("--restart", prune_restart, "discard the checkpoint in the output folder instead of resuming it");

  auto* depth = app.add_subcommand("depth", "remove whole decoder blocks (ShortGPT's Block Influence, angular "
                                            "distance, LaCo merging, perplexity greedy)");
  std::vector<std::string> depth_args;
  bool depth_scores_only = false;
  depth->add_option("args", depth_args, "[config.yaml] [key=value ...] (e.g. depth.criterion=angular depth.remove=2)");
  depth->add_flag("--print-config", print_config, "print the resolved config and exit");
  depth->add_option("--model", model_opt, "Hugging Face model folder (same as model=DIR)");
  depth->add_flag("--scores-only", depth_scores_only, "print the per-block scores (JSON) and remove nothing");

  auto* exporter = app.add_subcommand("export", "write the Hugging Face folder of a complete pruning checkpoint");
  std::string ex_ckpt, ex_out, ex_model;
  std::int64_t ex_shard_mb = 5000;
  exporter->add_option("--checkpoint", ex_ckpt, "checkpoint folder (output.dir/ckpt of a prune)")->required();
  exporter->add_option("--out", ex_out, "folder to write (replaced if present)")->required();
  exporter->add_option("--model", ex_model, "source model folder (default: the one the checkpoint records)");
  exporter->add_option("--shard-mb", ex_shard_mb, "shard model.safetensors past this size (MB)");

  auto* inspect = app.add_subcommand("inspect", "per-layer and total sparsity of a model folder or checkpoint");
  std::string inspect_path;
  bool inspect_json = false;
  inspect->add_option("path", inspect_path, "Hugging Face model folder (or a pruning checkpoint folder)")->required();
  inspect->add_flag("--json", inspect_json, "print JSON instead of a table");

  // `scalpel plan`: per-rank memory, I/O, communication and time of a prune job (see plan.cpp).
  auto* plan = app.add_subcommand("plan", "per-rank memory, I/O, communication and time of a prune job, from "
                                          "config.json alone; refuses a grid that exceeds parallel.memory_gb");
  std::vector<std::string> plan_args;
  int plan_ranks = 0;
  bool plan_json = false;
  double plan_gflops = 0, plan_net_gbps = 0, plan_read_gbps = 0;
  plan->add_option("args", plan_args, "[config.yaml] [key=value ...] (e.g. parallel.stages=8)");
  plan->add_option("--model", model_opt, "Hugging Face model folder (same as model=DIR); config.json is enough");
  plan->add_option("--ranks", plan_ranks, "ranks of the job (default: the MPI world size; on one process, "
                                          "parallel.stages x parallel.data when parallel.data is set)")
      ->check(CLI::PositiveNumber);
  plan->add_flag("--json", plan_json, "print JSON (every rank's figures) instead of tables");
  plan->add_option("--gflops", plan_gflops, "FLOP rate per rank in GFLOP/s (default: cpu 95 x threads, cuda 19500)")
      ->check(CLI::PositiveNumber);
  plan->add_option("--net-gbps", plan_net_gbps, "network GB/s per rank (default 12.5)")->check(CLI::PositiveNumber);
  plan->add_option("--read-gbps", plan_read_gbps, "checkpoint read GB/s per rank (default 2)")
      ->check(CLI::PositiveNumber);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = rank == 0 ? app.exit(e) : (e.get_exit_code() == 0 ? 0 : scalpel::kExitInput);
    return code == 0 ? 0 : scalpel::kExitInput;
  }

  try {
    scalpel::log::init(rank, size, log_level);
    if (*eval) {
      std::string config_path;
      std::vector<std::string> overrides;
      split_args(eval_args, config_path, overrides);
      if (!model_opt.empty()) overrides.push_back("model=" + model_opt);
      if (!text_opts.empty()) overrides.push_back("eval.sets=" + preset_path_list("--text", text_opts));
      if (!task_opts.empty()) overrides.push_back("eval.tasks=" + preset_path_list("--task", task_opts));
      const auto cfg = scalpel::app::load_config(config_path, overrides);
      if (print_config) {
        if (rank == 0) std::cout << scalpel::app::dump_config(cfg);
        return 0;
      }
      return scalpel::app::run_eval(cfg, *world, {world->local_rank(), world->local_size()});
    }
    if (*prune) {
      std::string config_path;
      std::vector<std::string> overrides;
      split_args(prune_args, config_path, overrides);
      if (!model_opt.empty()) overrides.push_back("model=" + model_opt);
      const auto cfg = scalpel::app::load_config(config_path, overrides);
      if (print_config) {
        if (rank == 0) std::cout << scalpel::app::dump_config(cfg);
        return 0;
      }
      return scalpel::app::run_prune(cfg, *world, {world->local_rank(), world->local_size()}, prune_restart);
    }
    if (*depth) {
      std::string config_path;
      std::vector<std::string> overrides;
      split_args(depth_args, config_path, overrides);
      if (!model_opt.empty()) overrides.push_back("model=" + model_opt);
      const auto cfg = scalpel::app::load_config(config_path, overrides);
      if (print_config) {
        if (rank == 0) std::cout << scalpel::app::dump_config(cfg);
        return 0;
      }
      return scalpel::app::run_depth(cfg, *world, {world->local_rank(), world->local_size()}, depth_scores_only);
    }
    if (*plan) {
      std::string config_path;
      std::vector<std::string> overrides;
      split_args(plan_args, config_path, overrides);
      if (!model_opt.empty()) overrides.push_back("model=" + model_opt);
      const auto cfg = scalpel::app::load_config(config_path, overrides);
      int ranks = plan_ranks > 0 ? plan_ranks : size;
      if (plan_ranks <= 0 && size == 1 && cfg.parallel.data > 0) ranks = cfg.parallel.stages * cfg.parallel.data;
      // Only rank 0 plans and prints; an error there aborts the job (see the catch blocks).
      return rank == 0 ? scalpel::app::run_plan(cfg, ranks, plan_json, plan_gflops, plan_net_gbps, plan_read_gbps) : 0;
    }
    if (*exporter) return rank == 0 ? scalpel::app::run_export(ex_ckpt, ex_model, ex_out, ex_shard_mb) : 0;
    if (*inspect) {
      if (rank == 0) {
        const auto j = scalpel::app::inspect_hf_folder(inspect_path, !inspect_json);
        if (inspect_json) std::cout << j.dump(2) << '\n';
      }
      return 0;
    }
    if (*tokenize) return scalpel::app::run_tokenize(tk_model, tk_input, tk_preset, tk_output, tk_mode, *world);
  } catch (const CLI::ValidationError& e) {
    if (rank == 0) std::fprintf(stderr, "scalpel: error: %s\n", e.what());
    if (size > 1) world->abort(scalpel::kExitInput);
    return scalpel::kExitInput;
  } catch (const scalpel::Error& e) {
    const int code = exit_code(e.kind());
    std::fprintf(stderr, "scalpel: error%s: %s\n", size > 1 ? fmt::format(" (rank {})", rank).c_str() : "", e.what());
    if (e.kind() == scalpel::ErrorKind::internal) std::fprintf(stderr, "  (raised at %s)\n", e.where().c_str());
    if (size > 1) world->abort(code);
    return code;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "scalpel: error (rank %d): %s\n", rank, e.what());
    if (size > 1) world->abort(scalpel::kExitInternal);
    return scalpel::kExitInternal;
  }
  return 0;
}
