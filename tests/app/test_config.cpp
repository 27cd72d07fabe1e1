// Config parsing: defaults, overrides, and errors that name the key path.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "../../src/app/run_common.hpp"
#include "scalpel/app/config.hpp"
#include "scalpel/core/error.hpp"
#include "scalpel/core/paths.hpp"

namespace scalpel::test {
namespace {

std::string write_yaml(const std::string& text) {
  static int n = 0;
  const auto p = std::filesystem::temp_directory_path() /
                 ("scalpel_cfg_" + std::to_string(::getpid()) + "_" + std::to_string(n++) + ".yaml");
  std::ofstream(p) << text;
  return p.string();
}

std::string error_of(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  try {
    app::load_config(write_yaml(yaml), overrides);
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::input);
    return e.what();
  }
  return "no error";
}

TEST(Config, ReadsEveryKeyAndAppliesOverrides) {
  const auto path = write_yaml(R"(
model: models/opt-mini
threads: 3
eval:
  seqlen: 256
  sets:
    - {preset: wikitext2, path: a.txt}
    - {name: held, preset: text, path: b.txt}
output: {dir: out/x}
)");
  const auto c = app::load_config(path, {"eval.seqlen=128", "eval.sets.1.path=c.txt", "log.level=debug",
                                         "cuda.forward_dtype=bf16", "cpu.forward_dtype=fp16",
                                         "output.reconstruction_error=false"});
  EXPECT_EQ(c.cuda.forward_dtype, "bf16");
  EXPECT_EQ(c.cpu.forward_dtype, "fp16");
  EXPECT_FALSE(c.output.reconstruction_error);
  EXPECT_EQ(c.model, "models/opt-mini");
  EXPECT_EQ(c.threads, 3);
  EXPECT_EQ(c.eval.seqlen, 128);
  ASSERT_EQ(c.eval.sets.size(), 2u);
  EXPECT_EQ(c.eval.sets[0].name, "wikitext2");  // defaults to the preset
  EXPECT_EQ(c.eval.sets[1].name, "held");
  EXPECT_EQ(c.eval.sets[1].path, "c.txt");
  EXPECT_EQ(c.output.dir, "out/x");
  EXPECT_EQ(c.log.level, "debug");
  // The dump is itself a valid config that reads back to the same values.
  const auto again = app::load_config(write_yaml(app::dump_config(c)), {});
  EXPECT_EQ(app::dump_config(again), app::dump_config(c));
  EXPECT_EQ(app::config_hash(again), app::config_hash(c));
  EXPECT_NE(app::config_hash(app::load_config(path, {})), app::config_hash(c));
}

TEST(Config, PruneIdentityIgnoresEverythingButPruneCalibrationAndDeterminism) {
  const auto base = app::load_config("", {"prune.sparsity=0.5"});
  const auto id = app::prune_identity_hash(base);
  for (const char* other : {"eval.tasks=[{preset: mc, path: x.jsonl}]", "tokenizer.mode=sentencepiece",
                            "output.dir=elsewhere", "threads=3", "eval.add_bos=true", "log.level=debug",
                            "output.reconstruction_error=false"})
    EXPECT_EQ(app::prune_identity_hash(app::load_config("", {"prune.sparsity=0.5", other})), id) << other;
  for (const char* other : {"prune.sparsity=0.6", "calibration.nsamples=64", "determinism=strict", "prune.method=wanda",
                            "sparsegpt.split_width=0", "sparsegpt.tile=512"})
    EXPECT_NE(app::prune_identity_hash(app::load_config("", {"prune.sparsity=0.5", other})), id) << other;
  // The resolved forward dtype counts (the run passes it when it is not fp32).
  EXPECT_NE(app::prune_identity_hash(base, "F16"), id);
  EXPECT_NE(app::prune_identity_hash(base, "F16"), app::prune_identity_hash(base, "BF16"));
}

// sparsegpt.split_width (and then tile) count in a prune's identity only where a factor of the
// model reaches the width: a narrower model keeps the identity its checkpoints had before the keys
// existed (every factor whole, split_width 0), a wider one gets a new one (its fc2 factor is made
// another way), and a method without factors ignores them.
TEST(Config, SplitWidthCountsOnlyWhereAFactorReachesIt) {
  const std::vector<std::int32_t> ids{5, 6, 7};
  const auto hash = [&](const std::vector<std::string>& o, std::int64_t widest) {
    return app::prune_config_hash(app::load_config("", o), ids, DType::f32, widest);
  };
  const std::vector<std::string> dflt{}, off{"sparsegpt.split_width=0"}, tile{"sparsegpt.tile=512"};
  EXPECT_EQ(hash(dflt, 4096), hash(off, 4096));
  EXPECT_EQ(hash(tile, 4096), hash(off, 4096));
  EXPECT_NE(hash(dflt, 49152), hash(off, 49152));
  EXPECT_NE(hash(tile, 49152), hash(dflt, 49152));
  EXPECT_EQ(hash({"prune.method=wanda"}, 49152), hash({"prune.method=wanda", "sparsegpt.split_width=0"}, 49152));
}

// LLM Surgeon's identity leaves out the keys it does not read (the layer-wise prune's blocksize,
// dampening, true_sequential, propagation) and the order of surgeon.structures, so that changing
// them does not refuse a resume; what it reads counts. A structures list other than both is for
// the structured pattern alone, and [columns, rows] is the default's set.
TEST(Config, SurgeonIdentityCountsOnlyWhatTheSurgeonReads) {
  const std::vector<std::int32_t> ids{5, 6, 7};
  const auto hash = [&](std::vector<std::string> o) {
    o.push_back("prune.method=surgeon");
    return app::prune_config_hash(app::load_config("", o), ids);
  };
  const auto base = hash({});
  for (const char* same : {"prune.blocksize=64", "prune.dampening=0.1", "prune.true_sequential=false",
                           "prune.propagation=dense", "surgeon.structures=[columns, rows]",
                           "surgeon.keep_activations_mb=1", "surgeon.final_loss=false", "surgeon.eval_shots=[1]"})
    EXPECT_EQ(hash({same}), base) << same;
  for (const char* other : {"prune.sparsity=0.3", "surgeon.shots=8", "surgeon.damp_g=0.1", "surgeon.cost=kobd",
                            "surgeon.fisher=sampled", "surgeon.max_correlate=100", "prune.pattern=2:4"})
    EXPECT_NE(hash({other}), base) << other;
  const auto structured = hash({"prune.pattern=structured"});
  EXPECT_EQ(hash({"prune.pattern=structured", "surgeon.structures=[columns, rows]"}), structured);
  EXPECT_NE(hash({"prune.pattern=structured", "surgeon.structures=[rows]"}), structured);
  EXPECT_NE(hash({"prune.pattern=structured", "surgeon.structures=[rows]"}),
            hash({"prune.pattern=structured", "surgeon.structures=[columns]"}));
  // The layer-wise prune still counts its own keys.
  EXPECT_NE(app::prune_config_hash(app::load_config("", {"prune.blocksize=64"}), ids),
            app::prune_config_hash(app::load_config("", {}), ids));
}

// An allocation rule's identity holds its own keys, not the other rule's (an OWL checkpoint
// refused a rerun with another allocation.hutchinson_samples), nor where traces are cached.
TEST(Config, AllocationIdentityCountsOnlyTheRuleInUse) {
  const std::vector<std::int32_t> ids{5, 6, 7};
  const auto hash = [&](const std::string& rule, std::vector<std::string> o) {
    o.push_back("prune.method=wanda");
    o.push_back("prune.allocation=" + rule);
    return app::prune_config_hash(app::load_config("", o), ids);
  };
  const auto owl = hash("owl", {}), sens = hash("sensitivity", {});
  for (const char* same : {"allocation.hutchinson_samples=3", "allocation.weighted=true", "allocation.epsilon=0.01",
                           "allocation.alpha=0.05", "allocation.traces=t.json"})
    EXPECT_EQ(hash("owl", {same}), owl) << same;
  for (const char* other : {"allocation.owl_lambda=0.1", "allocation.owl_m=7"}) {
    EXPECT_NE(hash("owl", {other}), owl) << other;
    EXPECT_EQ(hash("sensitivity", {other}), sens) << other;
  }
  for (const char* other : {"allocation.hutchinson_samples=3", "allocation.alpha=0.05", "allocation.weighted=true"})
    EXPECT_NE(hash("sensitivity", {other}), sens) << other;
}

// A key that is not a name (a list or mapping as a key) was a yaml-cpp conversion error, exit 4;
// a key with no value kept the default silently ("dir:" with the value forgotten).
TEST(Config, KeysThatAreNotNamesAndKeysWithoutValuesAreInputErrors) {
  EXPECT_NE(error_of("model: x\n[1, 2]: y\n").find("line 2: a key of '<top>' is a list, not a name"),
            std::string::npos);
  EXPECT_NE(error_of("prune:\n  {a: 1}: 2\n").find("a key of 'prune' is a mapping, not a name"), std::string::npos);
  EXPECT_NE(error_of("output:\n  dir:\n").find("'output.dir' has no value (YAML null)"), std::string::npos);
  EXPECT_NE(error_of("model: x\nnull: 3\n").find("line 2: a key of '<top>' is null, not a name"), std::string::npos);
  EXPECT_NE(error_of("prune: {sparsity: ~}\n").find("'prune.sparsity' has no value"), std::string::npos);
  // A section or list with nothing under it: a bare "prune:" ran the default prune.
  for (const auto& [yaml, key] : std::vector<std::pair<std::string, std::string>>{
           {"prune:\n", "'prune' has no value (YAML null); give its keys"},
           {"prune: ~\n", "'prune' has no value"},
           {"output:\n# dir: runs/x\n", "'output' has no value"},
           {"eval:\n  sets:\n", "'eval.sets' has no value (YAML null); give its list"},
           {"eval: {sets: [~]}\n", "'eval.sets.0' has no value"},
           {"prune: {targets: }\n", "'prune.targets' has no value"},
           {"surgeon: {structures: ~}\n", "'surgeon.structures' has no value"},
           {"surgeon: {eval_shots: }\n", "'surgeon.eval_shots' has no value"},
           {"depth: {protect: ~}\n", "'depth.protect' has no value"}})
    EXPECT_NE(error_of(yaml).find(key), std::string::npos) << yaml << ": " << error_of(yaml);
  EXPECT_EQ(error_of("prune: {}\neval: {sets: []}\n"), "no error");  // empty, as written: the defaults, no sets
  // No setting takes a number that is not finite (allocation.owl_lambda inf printed a sparsity of -nan).
  for (const auto* v : {"inf", "-inf", "nan", "1e999"})
    EXPECT_NE(error_of(std::string("allocation: {owl_lambda: ") + v + "}\n").find("must be a finite number"),
              std::string::npos) << v;
  EXPECT_NE(error_of("", {"allocation.epsilon=1e30"}).find("'allocation.epsilon' 1e+30 must be in (0, 1]"),
            std::string::npos) << error_of("", {"allocation.epsilon=1e30"});
  // A set or task name on two lines would split its result line.
  EXPECT_NE(error_of("eval: {tasks: [{name: \"a\\nb\", preset: mc, path: x}]}\n").find("a control character (\"a\\nb\")"),
            std::string::npos);
}

TEST(Config, UnknownKeysNameTheirPath) {
  EXPECT_NE(error_of("modle: x\n").find("unknown key 'modle'"), std::string::npos);
  EXPECT_NE(error_of("eval: {seqlen: 8, batchsize: 2}\n").find("unknown key 'eval.batchsize'"), std::string::npos);
  EXPECT_NE(error_of("eval: {sets: [{preset: ptb, path: p, split: test}]}\n").find("unknown key 'eval.sets.0.split'"),
            std::string::npos);
  EXPECT_NE(error_of("", {"eval.sqlen=3"}).find("unknown key 'eval.sqlen'"), std::string::npos);
}

// YAML forbids a key twice in one mapping, but yaml-cpp keeps the first silently: a user who
// appended "sparsity: 0.7" below "sparsity: 0.5" would prune at 0.5. A second document ("---")
// would be ignored the same way.
TEST(Config, DuplicateKeysAndSecondDocumentsAreRefused) {
  EXPECT_NE(error_of("prune: {sparsity: 0.5}\nprune: {sparsity: 0.7}\n").find("key 'prune' is given twice"),
            std::string::npos);
  EXPECT_NE(error_of("prune:\n  sparsity: 0.5\n  sparsity: 0.7\n").find("key 'prune.sparsity' is given twice"),
            std::string::npos);
  EXPECT_NE(error_of("eval: {sets: [{preset: ptb, path: p, path: q}]}\n").find("'eval.sets.0.path' is given twice"),
            std::string::npos);
  EXPECT_NE(error_of("model: a\n---\nmodel: b\n").find("holds 2 YAML documents"), std::string::npos);
  // In an override's mapping too, also where it merges into a section the file has (the merge
  // kept the last silently).
  EXPECT_NE(error_of("surgeon: {shots: 5}\n", {"surgeon={shots: 3, shots: 4}"})
                .find("override 'surgeon': key 'surgeon.shots' is given twice"),
            std::string::npos) << error_of("surgeon: {shots: 5}\n", {"surgeon={shots: 3, shots: 4}"});
  EXPECT_NE(error_of("", {"surgeon={shots: 3, shots: 4}"}).find("'surgeon.shots' is given twice"), std::string::npos);
  EXPECT_NE(error_of("eval: {sets: [{name: a, preset: text, path: x}]}\n", {"eval.sets.0={path: y, path: z}"})
                .find("key 'eval.sets.0.path' is given twice"),
            std::string::npos);
  EXPECT_EQ(error_of("---\nmodel: a\n"), "no error");  // one document with its marker is fine
  EXPECT_EQ(error_of("model: a\n---\n"), "no error");  // and a trailing marker
}

// Sets are named as tasks are (preset, or preset/stem where a preset repeats), and two entries
// with one name are refused: their lines and metrics records could not be told apart.
TEST(Config, EvalEntriesGetNamesOfTheirOwn) {
  const auto c = app::load_config("", {"eval.sets=[{preset: text, path: a/heldout.txt}, {preset: text, path: "
                                       "calib.txt}, {preset: ptb, path: p.txt}]"});
  ASSERT_EQ(c.eval.sets.size(), 3u);
  EXPECT_EQ(c.eval.sets[0].name, "text/heldout");
  EXPECT_EQ(c.eval.sets[1].name, "text/calib");
  EXPECT_EQ(c.eval.sets[2].name, "ptb");
  EXPECT_NE(error_of("", {"eval.sets=[{name: a, preset: text, path: x}, {name: a, preset: ptb, path: y}]"})
                .find("'eval.sets' has two entries named 'a'"),
            std::string::npos);
  EXPECT_NE(error_of("", {"eval.tasks=[{name: a, preset: mc, path: x}, {name: a, preset: mc, path: y}]"})
                .find("'eval.tasks' has two entries named 'a'"),
            std::string::npos);
  // Automatic names that still collide (--text cannot name a set) are told apart by a number.
  const auto same_stem = app::load_config("", {"eval.sets=[{preset: text, path: a/h.txt}, {preset: text, path: b/h.txt}]"});
  EXPECT_EQ(same_stem.eval.sets[0].name, "text/h");
  EXPECT_EQ(same_stem.eval.sets[1].name, "text/h#2");
}

TEST(Config, WrongTypesNameTheKey) {
  EXPECT_NE(error_of("eval: {seqlen: long}\n").find("'eval.seqlen' must be an integer, got 'long'"), std::string::npos);
  EXPECT_NE(error_of("threads: 2.5\n").find("'threads' must be an integer"), std::string::npos);
  EXPECT_NE(error_of("eval: [1, 2]\n").find("'eval' must be a mapping"), std::string::npos);
  EXPECT_NE(error_of("model: {a: 1}\n").find("'model' must be a scalar"), std::string::npos);
  EXPECT_NE(error_of("eval: {sets: [{preset: imdb, path: x}]}\n").find("'eval.sets.0.preset' is 'imdb'"),
            std::string::npos);
  EXPECT_NE(error_of("device: tpu\n").find("'device' is 'tpu'"), std::string::npos);
  EXPECT_NE(error_of("tokenizer: {mode: slow}\n").find("'tokenizer.mode' is 'slow'"), std::string::npos);
  EXPECT_NE(error_of("tokenizer: {legacy: true}\n").find("unknown key 'tokenizer.legacy'"), std::string::npos);
  EXPECT_NE(error_of("", {"noequals"}).find("not of the form key=value"), std::string::npos);
  EXPECT_NE(error_of("eval: {batch: 0}\n").find("'eval.batch' must be >= 1"), std::string::npos);
  EXPECT_NE(error_of("", {"sparsegpt.split_width=-1"}).find("'sparsegpt.split_width' is -1"), std::string::npos);
  EXPECT_NE(error_of("", {"sparsegpt.tile=0"}).find("'sparsegpt.tile' is 0"), std::string::npos);
  EXPECT_NE(error_of("log: {level: loud}\n").find("'log.level' is 'loud'"), std::string::npos);
  // N:M reaches N/M for every method: another sparsity would be ignored, so it is refused.
  EXPECT_NE(error_of("", {"prune.pattern=2:4", "prune.sparsity=0.7"}).find("reaches N/M = 0.5"), std::string::npos);
  EXPECT_EQ(error_of("", {"prune.pattern=1:4", "prune.sparsity=0.25"}), "no error");
  EXPECT_EQ(error_of("", {"prune.pattern=4:8"}), "no error");  // the default 0.5 stands for "not given"
}

// The export replaces its folder: not the run folder, not the checkpoint, not inside it.
TEST(Config, TheExportCannotBeTheRunFolderOrTheCheckpoint) {
  for (const char* bad : {"output.export=.", "output.export=ckpt", "output.export=ckpt/", "output.export=..",
                          "output.export=a/../ckpt"})
    EXPECT_NE(error_of("", {"output.dir=runs/x", bad}).find("'output.export' is"), std::string::npos) << bad;
  EXPECT_NE(error_of("", {"output.dir=runs/x", "output.export=ckpt/model"}).find("inside the checkpoint folder"),
            std::string::npos);
  for (const char* good : {"output.export=model", "output.export=../elsewhere", "output.export=ckpt2"})
    EXPECT_EQ(error_of("", {"output.dir=runs/x", good}), "no error") << good;
  // The export and the metrics file on one path: refused before the work (depth found it after
  // its scoring, and prune after every layer); so is a metrics file in the checkpoint.
  EXPECT_NE(error_of("", {"output.export=metrics.jsonl"}).find("the export would replace the metrics file"),
            std::string::npos);
  EXPECT_NE(error_of("", {"output.metrics=model/m.jsonl"}).find("the export would replace the metrics file"),
            std::string::npos);
  EXPECT_NE(error_of("", {"output.metrics=ckpt"}).find("'output.metrics' is 'ckpt'"), std::string::npos);
  EXPECT_EQ(error_of("", {"output.metrics=ckpt.jsonl"}), "no error");
}

TEST(Config, MalformedYamlAndMissingFileNameTheFile) {
  const auto bad = write_yaml("eval: {seqlen: [\n");
  try {
    app::load_config(bad, {});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(bad), std::string::npos);
  }
  try {
    app::load_config("/nonexistent/scalpel.yaml", {});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/scalpel.yaml"), std::string::npos);
  }
}

// Found by an exploratory review: a folder as the config file was an internal error (exit 4),
// integers out of their setting's range wrapped (threads 4294967297 ran as 1, seed -1 as 2^64-1),
// and an empty output.dir wrote the run into the working directory.
TEST(Config, FoldersOutOfRangeIntegersAndAnEmptyRunFolderAreInputErrors) {
  const auto folder = std::filesystem::temp_directory_path() / "scalpel_cfg_folder";
  std::filesystem::create_directories(folder);
  try {
    app::load_config(folder.string(), {});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::input);
    EXPECT_NE(std::string(e.what()).find("is a folder"), std::string::npos) << e.what();
  }
  std::filesystem::remove_all(folder);
  EXPECT_NE(error_of("threads: 4294967297\n").find("'threads' is 4294967297, outside"), std::string::npos);
  EXPECT_NE(error_of("", {"calibration.seed=-1"}).find("'calibration.seed' is -1, outside 0.."), std::string::npos);
  EXPECT_NE(error_of("", {"output.dir="}).find("'output.dir' is empty"), std::string::npos);
  EXPECT_EQ(error_of("threads: 2147483647\n"), "no error");  // the largest int is a value like any other
  // An unsigned setting takes its whole range (a seed above 2^63 - 1 was "must be an integer").
  EXPECT_EQ(app::load_config("", {"calibration.seed=18446744073709551615"}).calibration.seed,
            18446744073709551615ull);
  EXPECT_NE(error_of("", {"calibration.seed=18446744073709551616"}).find("'calibration.seed' must be an integer"),
            std::string::npos);
  EXPECT_NE(error_of("", {"surgeon.shots=4294967297"}).find("'surgeon.shots' 4294967297 exceeds 1000"),
            std::string::npos);
  EXPECT_EQ(error_of("", {"surgeon.shots=1000"}), "no error");

  EXPECT_NE(error_of("", {"surgeon.damp_a=0"}).find("'surgeon.damp_a' is 0, it must be > 0"), std::string::npos);
  EXPECT_NE(error_of("", {"prune.targets=[fc1, fc2, fc1]"}).find("'prune.targets' names 'fc1' twice"),
            std::string::npos);
  EXPECT_NE(error_of("", {"surgeon.structures=[rows, rows]"}).find("names 'rows' twice"), std::string::npos);
}

// Overrides: "~" is no value, as in a file (it became the text "~": a folder named "~"); a key
// under a value is an input error naming it (it was yaml-cpp's exit 4); a mapping merges into its
// section (it replaced it, dropping the file's other keys); "key=" is the empty string.
TEST(Config, OverridesOfNullUnderAValueAndOfASection) {
  for (const auto* o : {"output.dir=~", "output.dir=null", "prune.targets=~"})
    EXPECT_NE(error_of("", {o}).find("is YAML null, no value"), std::string::npos) << o;
  EXPECT_NE(error_of("model: x\n", {"model.x=1"}).find("'model' is a value, not a mapping"), std::string::npos);
  EXPECT_NE(error_of("model: x\n", {"model.x.y=1"}).find("'model' is a value, not a mapping"), std::string::npos);
  EXPECT_NE(error_of("calibration: {seed: 3}\n", {"calibration.seed.0=1"}).find("'calibration.seed' is a value"),
            std::string::npos);
  const auto c = app::load_config(write_yaml("surgeon: {shots: 5, damp_g: 0.5}\ncalibration: {nsamples: 16}\n"),
                                  {"surgeon={shots: 3}", "calibration={seqlen: 64}"});
  EXPECT_EQ(c.surgeon.shots, 3);
  EXPECT_DOUBLE_EQ(c.surgeon.damp_g, 0.5);
  EXPECT_EQ(c.calibration.nsamples, 16);
  EXPECT_EQ(c.calibration.seqlen, 64);
  EXPECT_EQ(app::load_config("", {"output.export="}).output.export_dir, "");
  // A list item too: the mapping merges into it.
  const auto e = app::load_config(write_yaml("eval: {sets: [{name: a, preset: text, path: x.txt}]}\n"),
                                  {"eval.sets.0={path: y.txt}"});
  ASSERT_EQ(e.eval.sets.size(), 1u);
  EXPECT_EQ(e.eval.sets[0].path, "y.txt");
  EXPECT_EQ(e.eval.sets[0].name, "a");
}

// The relation behind the export's and the run folder's checks: whole components, a trailing
// separator of the outer path ignored.
TEST(Paths, WithinComparesWholeComponents) {
  EXPECT_TRUE(path_within("runs/a", "runs/a"));
  EXPECT_TRUE(path_within("runs/a", "runs/a/ckpt/x"));
  EXPECT_TRUE(path_within("runs/a/", "runs/a/model"));
  EXPECT_FALSE(path_within("runs/a", "runs/ab"));
  EXPECT_FALSE(path_within("runs/a/ckpt", "runs/a"));
  EXPECT_FALSE(path_within("/runs/a", "runs/a"));
}

}  // namespace
}  // namespace scalpel::test
