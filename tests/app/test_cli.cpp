// End-to-end tests of the scalpel executable: the dense perplexities of the shared models against
// their model cards, one process against several, and every kind of bad input giving a clear
// message that names the file/key/tensor, a non-zero exit, and no crash.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>

#include "scalpel/io/safetensors.hpp"
#include "prune_test_util.hpp"

namespace fs = std::filesystem;

namespace {

using scalpel_test::Run;
using scalpel_test::run;

using scalpel_test::kBin;
using scalpel_test::kShared;

double ppl_of(const Run& r, const std::string& set) {
  std::smatch m;
  const std::regex re(set + R"(: ppl ([0-9.]+))");
  if (!std::regex_search(r.out, m, re)) return -1;
  return std::stod(m[1]);
}

fs::path temp_dir(const std::string& name) {
  const auto d = fs::temp_directory_path() / ("scalpel_cli_" + std::to_string(::getpid()) + "_" + name);
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

// A copy of opt-mini to break in one way.
fs::path copy_model(const std::string& name) {
  const auto d = temp_dir(name);
  for (const auto& e : fs::directory_iterator(kShared / "models/opt-mini"))
    fs::copy_file(e.path(), d / e.path().filename());
  for (const auto& e : fs::directory_iterator(d)) fs::permissions(e.path(), fs::perms::owner_write, fs::perm_options::add);
  return d;
}

std::string eval_cmd(const fs::path& model, const std::string& text, const std::string& extra = "") {
  return kBin + " eval --model " + model.string() + " --text " + text + " eval.max_windows=2 eval.seqlen=64 " +
         "output.metrics= threads=1 " + extra;
}

std::string heldout() { return "text:" + (kShared / "data/corpus/heldout.txt").string(); }

// The acceptance figures: dense perplexities to 0.1% of the model cards, which were measured with
// an independent PyTorch implementation of the HF models (fp16 weights upcast to fp32, seqlen
// 512, SparseGPT protocol). 0.1% is the issue's bound; what we see is ~1e-5 (fp32 reassociation).
void expect_card_figures(const std::string& model, double wikitext2, double heldout) {
  const auto r = run(kBin + " eval --model " + (kShared / "models" / model).string() + " --text wikitext2:" +
                     (kShared / "data/wikitext2/wiki.test.raw.joined.txt").string() + " --text text:" +
                     (kShared / "data/corpus/heldout.txt").string() + " output.metrics= log.progress_seconds=0 threads=1");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NEAR(ppl_of(r, "wikitext2"), wikitext2, wikitext2 * 1e-3) << r.out;
  EXPECT_NEAR(ppl_of(r, "text"), heldout, heldout * 1e-3) << r.out;
}

TEST(Cli, OptMiniWikiText2AndHeldoutMatchModelCard) {
  NEED_SHARED();
  expect_card_figures("opt-mini", 1170.02, 227.91);
}

TEST(Cli, LlamaMiniWikiText2AndHeldoutMatchModelCard) {
  NEED_SHARED();
  expect_card_figures("llama-mini", 362.83, 168.39);
}

TEST(Cli, MpiRanksGiveTheSamePerplexityAndOnlyRankZeroPrints) {
  NEED_SHARED();
  const auto one = run(eval_cmd(kShared / "models/opt-mini", heldout(), "eval.max_windows=6"));
  ASSERT_EQ(one.code, 0) << one.out;
  const auto two = run(std::string(SCALPEL_MPIEXEC) + " -n 3 --oversubscribe " +
                       eval_cmd(kShared / "models/opt-mini", heldout(), "eval.max_windows=6"));
  ASSERT_EQ(two.code, 0) << two.out;
  EXPECT_NEAR(ppl_of(two, "text"), ppl_of(one, "text"), 1e-6 * ppl_of(one, "text"));
  std::size_t lines = 0;
  for (std::size_t p = two.out.find("text: ppl"); p != std::string::npos; p = two.out.find("text: ppl", p + 1)) ++lines;
  EXPECT_EQ(lines, 1u) << two.out;
  // Batches of 4 windows over 3 ranks: whole batches go to a rank, so each forward pass holds the
  // same windows as at 1 rank and the perplexity is the same to the last bit (a window split off
  // its batch got other bits from OpenBLAS, whose GEMM rows depend on their place in the call).
  const auto d = temp_dir("batched");
  const std::string batched = "eval.max_windows=10 eval.batch=4 output.metrics=metrics.jsonl output.dir=";
  ASSERT_EQ(run(eval_cmd(kShared / "models/opt-mini", heldout(), batched + (d / "one").string())).code, 0);
  ASSERT_EQ(run(std::string(SCALPEL_MPIEXEC) + " -n 3 --oversubscribe " +
                eval_cmd(kShared / "models/opt-mini", heldout(), batched + (d / "three").string()))
                .code,
            0);
  const auto ppl = [&](const char* run_dir) {
    std::ifstream f(d / run_dir / "metrics.jsonl");
    for (std::string line; std::getline(f, line);)
      if (const auto j = nlohmann::json::parse(line); j.value("event", "") == "eval") return j.at("ppl").get<double>();
    return -1.0;
  };
  EXPECT_GT(ppl("one"), 0);
  EXPECT_EQ(ppl("three"), ppl("one"));
  fs::remove_all(d);
}

TEST(Cli, PrintConfigShowsOverridesWithoutRunning) {
  const auto r = run(kBin + " eval --print-config model=/nowhere eval.seqlen=77 prune.sparsity=0.6");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("model: /nowhere"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("seqlen: 77"), std::string::npos) << r.out;
  // Numbers as written (it printed 0.59999999999999998, the double's 17 digits).
  EXPECT_NE(r.out.find("sparsity: 0.6\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("owl_lambda: 0.08\n"), std::string::npos) << r.out;
  // Every key, defaults included (those a checkpoint's identity leaves out as well), and a dump
  // read back prints the same.
  for (const char* key : {"keep_activations_mb:", "eval_shots:", "allocation: uniform", "saliency: obs",
                          "split_width:", "traces:"})
    EXPECT_NE(r.out.find(key), std::string::npos) << key << "\n" << r.out;
  const auto file = temp_dir("print_config") / "dump.yaml";
  fs::create_directories(file.parent_path());
  std::ofstream(file) << r.out;
  const auto again = run(kBin + " eval --print-config " + file.string());
  ASSERT_EQ(again.code, 0) << again.out;
  EXPECT_EQ(again.out, r.out);
  fs::remove_all(file.parent_path());
  // --log-level (before the command) wins over log.level, and the printed config says so.
  const auto lv = run(kBin + " --log-level warn eval --print-config model=/nowhere log.level=debug");
  ASSERT_EQ(lv.code, 0) << lv.out;
  EXPECT_NE(lv.out.find("level: warn"), std::string::npos) << lv.out;
  // ... and after it, where one writes it at the end of a command line (it was "not expected").
  for (const char* cmd : {"eval", "prune", "depth"}) {
    const auto after = run(kBin + " " + cmd + " --print-config model=/nowhere log.level=debug --log-level warn");
    ASSERT_EQ(after.code, 0) << cmd << ": " << after.out;
    EXPECT_NE(after.out.find("level: warn"), std::string::npos) << cmd << ": " << after.out;
  }
}

TEST(Cli, TokenizeWritesInt32IdsAndCount) {
  NEED_SHARED();
  const auto d = temp_dir("tok");
  const auto r = run(kBin + " tokenize --model " + (kShared / "models/opt-mini").string() + " --input " +
                     (kShared / "data/corpus/calib.txt").string() + " --output " + (d / "ids.bin").string());
  ASSERT_EQ(r.code, 0) << r.out;
  const auto bytes = fs::file_size(d / "ids.bin");
  EXPECT_EQ(bytes % 4, 0u);
  EXPECT_NE(r.out.find(std::to_string(bytes / 4) + " tokens"), std::string::npos) << r.out;
  std::ifstream f(d / "ids.bin", std::ios::binary);
  std::int32_t first = -1;
  f.read(reinterpret_cast<char*>(&first), 4);
  EXPECT_EQ(first, 2);  // OPT's leading </s>
  // An empty text has ids too, as transformers' tokenizer(""): OPT's </s> alone (it was refused as
  // an empty evaluation text).
  std::ofstream(d / "empty.txt");
  const auto none = run(kBin + " tokenize --model " + (kShared / "models/opt-mini").string() + " --input " +
                        (d / "empty.txt").string() + " --output " + (d / "empty.ids").string());
  ASSERT_EQ(none.code, 0) << none.out;
  EXPECT_NE(none.out.find("1 tokens"), std::string::npos) << none.out;
  EXPECT_EQ(scalpel_test::read_bytes(d / "empty.ids"), std::string("\x02\0\0\0", 4));
  // An existing folder as --output is refused, not renamed over (it exited 4 leaving a .tmp).
  const auto to_dir = run(kBin + " tokenize --model " + (kShared / "models/opt-mini").string() + " --input " +
                          (kShared / "data/corpus/calib.txt").string() + " --output " + d.string());
  EXPECT_EQ(to_dir.code, 2) << to_dir.out;
  EXPECT_NE(to_dir.out.find("is a folder"), std::string::npos) << to_dir.out;
  EXPECT_FALSE(fs::exists(d.string() + ".tmp"));
  // An empty --output is bad input (it was an I/O error about renaming ".tmp").
  const auto empty = run(kBin + " tokenize --model " + (kShared / "models/opt-mini").string() + " --input " +
                         (kShared / "data/corpus/calib.txt").string() + " --output ''");
  EXPECT_EQ(empty.code, 2) << empty.out;
  EXPECT_NE(empty.out.find("--output: the path is empty"), std::string::npos) << empty.out;
  // --output naming the --input text (here by another spelling) would replace the text by its ids.
  const auto text = d / "text.txt";
  fs::copy_file(kShared / "data/corpus/calib.txt", text);
  const auto before = fs::file_size(text);
  const auto onto_input = run(kBin + " tokenize --model " + (kShared / "models/opt-mini").string() + " --input " +
                              text.string() + " --output " + (d / "." / "text.txt").string());
  EXPECT_EQ(onto_input.code, 2) << onto_input.out;
  EXPECT_NE(onto_input.out.find("would overwrite the --input text"), std::string::npos) << onto_input.out;
  EXPECT_EQ(fs::file_size(text), before);
  // Nor may the file it is written to first (OUTPUT.tmp), nor its .json (a folder there too).
  fs::rename(text, d / "ids.tmp");
  const auto tmp_input = run(kBin + " tokenize --model " + (kShared / "models/opt-mini").string() + " --input " +
                             (d / "ids.tmp").string() + " --output " + (d / "ids").string());
  EXPECT_EQ(tmp_input.code, 2) << tmp_input.out;
  EXPECT_NE(tmp_input.out.find("ids.tmp would overwrite the --input text"), std::string::npos) << tmp_input.out;
  EXPECT_EQ(fs::file_size(d / "ids.tmp"), before);
  fs::create_directories(d / "side.json");
  const auto side = run(kBin + " tokenize --model " + (kShared / "models/opt-mini").string() + " --input " +
                        (d / "ids.tmp").string() + " --output " + (d / "side").string());
  EXPECT_EQ(side.code, 2) << side.out;
  EXPECT_NE(side.out.find("side.json is a folder"), std::string::npos) << side.out;
  EXPECT_FALSE(fs::exists(d / "side"));
}

struct BadCase {
  std::string what;
  Run r;
};

void expect_clean_failure(const Run& r, const std::vector<std::string>& needles) {
  EXPECT_EQ(r.code, 2) << r.out;  // input errors exit 2
  for (const auto& n : needles) EXPECT_NE(r.out.find(n), std::string::npos) << "missing '" << n << "' in:\n" << r.out;
  EXPECT_EQ(r.out.find("terminate called"), std::string::npos) << r.out;
}

TEST(Cli, UnknownConfigKeyAndWrongType) {
  expect_clean_failure(run(kBin + " eval model=x eval.sqlen=3"), {"unknown key 'eval.sqlen'"});
  expect_clean_failure(run(kBin + " eval model=x eval.seqlen=abc"), {"'eval.seqlen' must be an integer"});
  // Quoted, a number or a boolean is a string in YAML: refused (it was converted).
  expect_clean_failure(run(kBin + " eval --print-config model=x 'prune.sparsity=\"0.5\"'"),
                       {"'prune.sparsity' must be a number, got the quoted string '0.5'"});
  expect_clean_failure(run(kBin + " eval --print-config model=x \"eval.add_bos='true'\""),
                       {"'eval.add_bos' must be a boolean, got the quoted string 'true'"});
  EXPECT_EQ(run(kBin + " eval --print-config model=x prune.sparsity=0.5 eval.add_bos=true").code, 0);
  // The output path named is the one at fault (both blamed output.metrics).
  expect_clean_failure(run(kBin + " prune --print-config model=x output.checkpoint=."),
                       {"'output.checkpoint' is '.', the run folder itself; name a folder of its own"});
  expect_clean_failure(run(kBin + " prune --print-config model=x output.checkpoint=.."),
                       {"'output.checkpoint' is '..', the run folder itself or a folder holding it"});
  expect_clean_failure(run(kBin + " prune --print-config model=x output.export=.."),
                       {"'output.export' is '..': the export replaces that folder, which would take the run folder"});
}

// Command-line mistakes: the prefix every error has, the flag or word named, exit code 2.
TEST(Cli, CommandLineMistakesNameTheFlagOrWord) {
  expect_clean_failure(run(kBin + " frob"), {"scalpel: error: unknown command 'frob'"});
  expect_clean_failure(run(kBin + " plan --model x --ranks 0"), {"scalpel: error: --ranks: must be a number above 0"});
  expect_clean_failure(run(kBin + " plan --model x --gflops abc"), {"--gflops: must be a number above 0, got 'abc'"});
  expect_clean_failure(run(kBin + " export --out y"), {"scalpel: error: --checkpoint is required"});
}

// --version names the release and the commit built; a config file whose path holds '=' is the
// config (it was read as an override: "unknown key '/tmp/.../lr'"); --model and a model= override
// naming two models are refused (the override lost silently).
TEST(Cli, VersionConfigPathsWithEqualsAndTwoModels) {
  const auto v = run(kBin + " --version");
  ASSERT_EQ(v.code, 0) << v.out;
  EXPECT_NE(v.out.find("scalpel 0.1.0 (commit "), std::string::npos) << v.out;
  const auto dir = temp_dir("lr=0.1");
  std::ofstream(dir / "prune.yaml") << "model: /nowhere\neval:\n  seqlen: 77\n";
  const auto c = run(kBin + " eval --print-config " + (dir / "prune.yaml").string() + " eval.max_windows=3");
  ASSERT_EQ(c.code, 0) << c.out;
  EXPECT_NE(c.out.find("seqlen: 77"), std::string::npos) << c.out;
  EXPECT_NE(c.out.find("max_windows: 3"), std::string::npos) << c.out;
  fs::remove_all(dir);
  expect_clean_failure(run(kBin + " eval --print-config --model /a model=/b"),
                       {"--model /a and the override model=/b name two models; give one"});
  for (const char* same : {"model=/a", "model=/a/", "'model=\"/a\"'"}) {
    const auto r = run(kBin + " eval --print-config --model /a " + same);
    EXPECT_EQ(r.code, 0) << same << "\n" << r.out;
  }
}

// A missing evaluation text stops `scalpel eval` before it writes anything (no empty metrics file).
TEST(Cli, AMissingTextWritesNothing) {
  NEED_SHARED();
  const auto d = temp_dir("eval_missing");
  expect_clean_failure(run(kBin + " eval --model " + (kShared / "models/opt-mini").string() +
                           " --text text:/nonexistent/held.txt output.dir=" + (d / "out").string()),
                       {"/nonexistent/held.txt"});
  EXPECT_FALSE(fs::exists(d / "out"));
  fs::remove_all(d);
}

// The metrics file gets whole records or an error: a full disk or a file-size limit exits 3 naming
// the file, with no half record left (it used to exit 0 and leave a cut line); a run that fails
// before its first record leaves no empty metrics file behind.
TEST(Cli, MetricsRecordsAreWholeOrTheRunFails) {
  NEED_SHARED();
  const auto d = temp_dir("metrics_io");
  const auto full = run(kBin + " eval --model " + (kShared / "models/opt-mini").string() + " --text " + heldout() +
                        " eval.max_windows=1 eval.seqlen=64 threads=1 output.metrics=/dev/full");
  EXPECT_EQ(full.code, 3) << full.out;
  EXPECT_NE(full.out.find("/dev/full: cannot write the metrics record (eval): No space left on device"),
            std::string::npos) << full.out;
  const std::string before(901, 'x');
  std::ofstream(d / "metrics.jsonl") << before;
  const auto limited = run("bash -c 'ulimit -f 1; " + eval_cmd(kShared / "models/opt-mini", heldout(),
                                                               "output.dir=" + d.string() + " output.metrics=metrics.jsonl") + "'");
  EXPECT_EQ(limited.code, 3) << limited.out;
  EXPECT_NE(limited.out.find("File too large"), std::string::npos) << limited.out;
  std::ifstream in(d / "metrics.jsonl");
  EXPECT_EQ(std::string((std::istreambuf_iterator<char>(in)), {}), before);  // cut back to where it was
  // A model whose weights are NaN: the evaluation fails (exit 3) before any record.
  const auto nan = copy_model("nan");
  auto f = scalpel::io::SafetensorsFile::open(kShared / "models/opt-mini/model.safetensors");
  std::vector<std::pair<std::string, scalpel::Tensor>> tensors;
  for (const auto& t : f->header().tensors) {
    scalpel::Tensor v = f->view(t.name).clone();
    if (t.name == "model.decoder.layers.1.fc1.weight") std::memset(v.raw(), 0xff, v.nbytes());  // NaN in any float
    tensors.emplace_back(t.name, v);
  }
  scalpel::io::write_safetensors(nan / "model.safetensors", tensors);
  const auto r = run(eval_cmd(nan, heldout(), "output.dir=" + (d / "nan").string() + " output.metrics=metrics.jsonl"));
  EXPECT_EQ(r.code, 3) << r.out;
  EXPECT_NE(r.out.find("non-finite"), std::string::npos) << r.out;
  // It points at the weights too (it blamed an overflow alone, and sent users after fp16 ranges).
  EXPECT_NE(r.out.find("the weights hold a NaN or an infinity (a damaged checkpoint?)"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(d / "nan/metrics.jsonl"));
  fs::remove_all(d);
  fs::remove_all(nan);
}

TEST(Cli, MissingModelFolder) {
  expect_clean_failure(run(kBin + " eval --model /nonexistent/model --text text:/etc/hostname"), {"/nonexistent/model"});
  // A file given for the folder (its config.json, say) is named as such, not "no such directory".
  const auto file = (kShared / "models/opt-mini/config.json").string();
  for (const std::string cmd : {" eval --text text:/etc/hostname --model ", " inspect ", " plan --model "})
    expect_clean_failure(run(kBin + cmd + file), {file + ": not a model folder (it is a file"});
}

TEST(Cli, TruncatedSafetensors) {
  NEED_SHARED();
  const auto d = copy_model("trunc");
  fs::resize_file(d / "model.safetensors", 5000);  // inside the 7520-byte header
  expect_clean_failure(run(eval_cmd(d, heldout())), {(d / "model.safetensors").string()});
}

TEST(Cli, MissingTensor) {
  NEED_SHARED();
  const auto d = copy_model("missing");
  auto f = scalpel::io::SafetensorsFile::open(kShared / "models/opt-mini/model.safetensors");
  std::vector<std::pair<std::string, scalpel::Tensor>> keep;
  for (const auto& t : f->header().tensors)
    if (t.name != "model.decoder.layers.2.fc1.weight") keep.emplace_back(t.name, f->view(t.name));
  scalpel::io::write_safetensors(d / "model.safetensors", keep);
  expect_clean_failure(run(eval_cmd(d, heldout())), {"model.decoder.layers.2.fc1.weight"});
  // Found while the evaluation runs: no output folder is left behind, empty (it was).
  const auto out = d / "out";
  expect_clean_failure(run(eval_cmd(d, heldout(), "output.metrics=metrics.jsonl output.dir=" + out.string())),
                       {"model.decoder.layers.2.fc1.weight"});
  EXPECT_FALSE(fs::exists(out));
}

// prune, LLM Surgeon, depth and plan check every layer's tensors (present, shaped as config.json says,
// a float type) from the headers before any work: a missing tensor of layer 2 or a transposed one
// of layer 1 used to surface only when the prune reached that layer, after committing the others.
TEST(Cli, PruneAndDepthCheckEveryLayersTensorsFirst) {
  NEED_SHARED();
  auto f = scalpel::io::SafetensorsFile::open(kShared / "models/opt-mini/model.safetensors");
  const auto missing = copy_model("pre_missing"), transposed = copy_model("pre_transposed");
  std::vector<std::pair<std::string, scalpel::Tensor>> keep, turned;
  for (const auto& t : f->header().tensors) {
    if (t.name != "model.decoder.layers.2.fc1.weight") keep.emplace_back(t.name, f->view(t.name));
    scalpel::Tensor v = f->view(t.name).clone();
    if (t.name == "model.decoder.layers.1.fc1.weight") v = v.reshape({v.size(1), v.size(0)});
    turned.emplace_back(t.name, v);
  }
  scalpel::io::write_safetensors(missing / "model.safetensors", keep);
  scalpel::io::write_safetensors(transposed / "model.safetensors", turned);
  const std::string calib = " calibration.path=" + (kShared / "data/corpus/calib.txt").string() +
                            " calibration.nsamples=4 calibration.seqlen=64 threads=1 output.dir=";
  const auto d = temp_dir("pre_out");
  for (const auto& [model, says] : std::vector<std::pair<fs::path, std::string>>{
           {missing, "tensor 'model.decoder.layers.2.fc1.weight' not found"},
           {transposed, "'model.decoder.layers.1.fc1.weight' has shape [256,1024], but config.json implies [1024,256]"}})
    for (const std::string& cmd : {"prune --model " + model.string() + " prune.method=magnitude",
                                  "prune --model " + model.string() + " prune.method=surgeon surgeon.shots=1",
                                  "depth --model " + model.string() + " depth.criterion=bi"}) {
      const auto out = d / std::to_string(std::hash<std::string>{}(cmd));
      const auto r = run(kBin + " " + cmd + calib + out.string());
      expect_clean_failure(r, {says});
      EXPECT_EQ(r.out.find("committed"), std::string::npos) << cmd << "\n" << r.out;  // before the first layer
      EXPECT_FALSE(fs::exists(out / "model")) << cmd;
    }
  // `scalpel plan` reads the same headers for the stored sizes: it refuses the same way.
  expect_clean_failure(run(kBin + " plan --model " + transposed.string()), {"has shape [256,1024]"});
  fs::remove_all(d);
  fs::remove_all(missing);
  fs::remove_all(transposed);
}

TEST(Cli, UnknownModelType) {
  NEED_SHARED();
  const auto d = copy_model("mtype");
  std::ifstream in(d / "config.json");
  std::string cfg((std::istreambuf_iterator<char>(in)), {});
  cfg.replace(cfg.find("\"opt\""), 5, "\"bloom\"");
  std::ofstream(d / "config.json") << cfg;
  expect_clean_failure(run(eval_cmd(d, heldout())),
                       {"config.json", "model_type 'bloom' is not supported (opt, llama, mistral, qwen2)"});
}

TEST(Cli, MissingAndMalformedTokenizer) {
  NEED_SHARED();
  const auto d = copy_model("tok_missing");
  for (const char* f : {"tokenizer.json", "vocab.json", "merges.txt"}) fs::remove(d / f);
  expect_clean_failure(run(eval_cmd(d, heldout())), {d.string()});
  const auto m = copy_model("tok_bad");
  std::ofstream(m / "tokenizer.json") << "{\"model\": {\"type\": \"BPE\", \"vocab\": [1, 2";
  expect_clean_failure(run(eval_cmd(m, heldout())), {(m / "tokenizer.json").string()});
}

TEST(Cli, EmptyAndTooShortText) {
  NEED_SHARED();
  const auto d = temp_dir("texts");
  std::ofstream(d / "empty.txt");
  std::ofstream(d / "short.txt") << "Only a few words here.";
  expect_clean_failure(run(eval_cmd(kShared / "models/opt-mini", "text:" + (d / "empty.txt").string())),
                       {(d / "empty.txt").string()});
  expect_clean_failure(run(eval_cmd(kShared / "models/opt-mini", "text:" + (d / "short.txt").string())),
                       {"fewer than one window"});
  expect_clean_failure(run(eval_cmd(kShared / "models/opt-mini", "text:/nonexistent/text.txt")),
                       {"/nonexistent/text.txt"});
}

TEST(Cli, ErrorOnEveryRankEndsTheMpiJob) {
  NEED_SHARED();
  const auto d = copy_model("mpi_trunc");
  fs::resize_file(d / "model.safetensors", 100000);  // header fine, data cut: a range past the end
  const auto r = run("timeout 60 " + std::string(SCALPEL_MPIEXEC) + " -n 2 --oversubscribe " + eval_cmd(d, heldout()));
  EXPECT_NE(r.code, 0) << r.out;
  EXPECT_NE(r.code, 124) << "the job hung:\n" << r.out;
  EXPECT_NE(r.out.find("model.safetensors"), std::string::npos) << r.out;
}

}  // namespace

namespace {

std::string task_cmd(const std::string& model, const std::string& tasks, const std::string& extra = "") {
  return kBin + " eval --model " + (kShared / "models" / model).string() + " " + tasks +
         " log.progress_seconds=0 threads=1 " + extra;
}

std::string everyday() { return (fs::path(SCALPEL_SOURCE_DIR) / "tests/data/tasks/everyday_mc.jsonl").string(); }

// A task or text file that is a pipe (/dev/stdin, a shell's <(...)) is read once: the check before
// the evaluation used to consume it, and the evaluation then found it empty ("no items").
TEST(Cli, PipedTaskAndTextFilesAreReadOnce) {
  NEED_SHARED();
  const auto task = run("head -n 5 " + everyday() + " | " + task_cmd("opt-mini", "--task mc:/dev/stdin", "output.metrics="));
  ASSERT_EQ(task.code, 0) << task.out;
  EXPECT_NE(task.out.find("; 5 items;"), std::string::npos) << task.out;
  const auto text = run("bash -c \"" + kBin + " eval --model " + (kShared / "models/opt-mini").string() +
                        " --text text:<(cat " + (kShared / "data/corpus/heldout.txt").string() +
                        ") eval.max_windows=1 eval.seqlen=64 threads=1 output.metrics=\"");
  ASSERT_EQ(text.code, 0) << text.out;
  EXPECT_NE(text.out.find("text: ppl "), std::string::npos) << text.out;
}

TEST(Cli, TaskLineAndMetricsRecord) {
  NEED_SHARED();
  const auto d = temp_dir("task_ok");
  const auto r = run(task_cmd("llama-mini", "--task mc:" + everyday(),
                              "eval.batch=4 output.dir=" + d.string() + " output.metrics=m.jsonl"));
  ASSERT_EQ(r.code, 0) << r.out;
  const std::regex line(R"(mc: acc (0\.\d{4}) \(± 0\.\d{4}\) acc_norm (0\.\d{4}) \(± 0\.\d{4}\); 40 items; [0-9.]+ s)");
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.out, m, line)) << r.out;
  std::ifstream in(d / "m.jsonl");
  std::string rec((std::istreambuf_iterator<char>(in)), {});
  EXPECT_NE(rec.find("\"event\":\"task\""), std::string::npos) << rec;
  EXPECT_NE(rec.find("\"acc\":" + std::string(m[1]).substr(0, 5)), std::string::npos) << rec;
  EXPECT_NE(rec.find("\"items\":40"), std::string::npos) << rec;
  EXPECT_NE(rec.find("\"tokenizer_mode\":\"transformers\""), std::string::npos) << rec;
}

TEST(Cli, BadTaskFilesNameFileLineAndField) {
  NEED_SHARED();
  const auto d = temp_dir("task_bad");
  std::ofstream(d / "label.jsonl") << R"({"context": "a", "choices": ["b", "c"], "label": 1})" << "\n"
                                   << R"({"context": "a", "choices": ["b", "c"], "label": 5})" << "\n";
  expect_clean_failure(run(task_cmd("opt-mini", "--task mc:" + (d / "label.jsonl").string())),
                       {"label.jsonl: line 2", "'label'", "out of range"});
  std::ofstream(d / "piqa.jsonl") << R"({"goal": "g", "sol1": "a", "label": 0})" << "\n";
  expect_clean_failure(run(task_cmd("opt-mini", "--task piqa:" + (d / "piqa.jsonl").string())),
                       {"piqa.jsonl: line 1", "'sol2'", "missing"});
  std::ofstream(d / "bytes.jsonl") << "{\"context\": \"\xff\", \"choices\": [\"b\"], \"label\": 0}\n";
  expect_clean_failure(run(task_cmd("opt-mini", "--task mc:" + (d / "bytes.jsonl").string())),
                       {"bytes.jsonl: line 1", "UTF-8"});
  expect_clean_failure(run(task_cmd("opt-mini", "--task mmlu:" + (d / "piqa.jsonl").string())), {"'mmlu'", "piqa"});
  expect_clean_failure(run(task_cmd("opt-mini", "--task " + (d / "piqa.jsonl").string())), {"not PRESET:PATH"});
  // Under MPI the error reaches every rank and ends the job.
  const auto r = run("timeout 60 " + std::string(SCALPEL_MPIEXEC) + " -n 2 --oversubscribe " +
                     task_cmd("opt-mini", "--task mc:" + (d / "label.jsonl").string()));
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("line 2"), std::string::npos) << r.out;
}

// What only the ids show (a text shorter than one window, a context that is only whitespace, a
// continuation longer than the model's context) is found before the first forward pass: nothing
// is scored or written (it stopped after the sets and tasks before it, their records written, and
// named the set instead of the file).
TEST(Cli, InputsTheIdsRefuseAreFoundBeforeAnyWork) {
  NEED_SHARED();
  const auto d = temp_dir("late_inputs");
  std::ofstream(d / "short.txt") << "short words here\n";
  std::ofstream(d / "ws.jsonl") << R"({"context": "a", "choices": ["b", "c"], "label": 1})" << "\n"
                                << R"({"context": "   ", "choices": ["b", "c"], "label": 0})" << "\n";
  std::string long_choice;
  for (int i = 0; i < 700; ++i) long_choice += " word";
  std::ofstream(d / "long.jsonl") << R"({"context": "a", "choices": [")" << long_choice << R"("], "label": 0})" << "\n";
  const std::string out = " output.dir=" + d.string() + " output.metrics=metrics.jsonl eval.max_windows=2";
  const auto short_text = run(task_cmd("opt-mini", "--text " + heldout() + " --text text:" + (d / "short.txt").string(), out));
  expect_clean_failure(short_text, {(d / "short.txt").string(), "fewer than one window"});
  const auto ws = run(task_cmd("opt-mini", "--task mc:" + everyday() + " --task mc:" + (d / "ws.jsonl").string(), out));
  expect_clean_failure(ws, {"ws.jsonl: line 2: request 0", "only whitespace"});
  const auto long_cont = run(task_cmd("opt-mini", "--task mc:" + (d / "long.jsonl").string(), out));
  expect_clean_failure(long_cont, {"long.jsonl: line 1", "more than the model's context"});
  for (const auto* r : {&short_text, &ws, &long_cont}) {
    EXPECT_EQ(r->out.find(": ppl"), std::string::npos) << r->out;
    EXPECT_EQ(r->out.find(": acc"), std::string::npos) << r->out;
  }
  EXPECT_FALSE(fs::exists(d / "metrics.jsonl"));
  fs::remove_all(d);
}

}  // namespace
