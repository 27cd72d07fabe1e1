// Helpers of the end-to-end CLI tests: temp folders, shell commands with their exit code and
// output, child processes (spawned quietly or with their output captured), files read whole, the
// records of a metrics file and the committed-layer count of a manifest; the paths and the skip
// rule they share.
#pragma once
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

namespace scalpel_test {

namespace fs = std::filesystem;

// What every CLI test target defines: the shared models and texts, the scalpel executable, and
// (for those that launch ranks) mpiexec.
inline const fs::path kShared = SCALPEL_SHARED_DIR;
inline const std::string kBin = SCALPEL_BIN;
#ifdef SCALPEL_MPIEXEC
inline const std::string kMpiexec = SCALPEL_MPIEXEC;
#endif

inline fs::path temp_dir(const std::string& name) {
  const auto d = fs::temp_directory_path() / ("scalpel_prune_" + std::to_string(::getpid()) + "_" + name);
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

// A shell command's exit code (128 + signal when killed) and its stdout and stderr together.
struct Run {
  int code = -1;
  std::string out;
};
inline Run run(const std::string& cmd) {
  Run r;
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return r;
  char buf[4096];
  while (std::fgets(buf, sizeof buf, p)) r.out += buf;
  const int st = pclose(p);
  r.code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  return r;
}

// Starts args[0] with args; its stdout and stderr go to `log` (or /dev/null when empty).
inline pid_t spawn(const std::vector<std::string>& args, const fs::path& log = {}) {
  const pid_t pid = fork();
  if (pid == 0) {
    std::vector<char*> argv;
    for (const auto& s : args) argv.push_back(const_cast<char*>(s.c_str()));
    argv.push_back(nullptr);
    const std::string out = log.empty() ? std::string("/dev/null") : log.string();
    if (!std::freopen(out.c_str(), "w", stdout) || dup2(fileno(stdout), fileno(stderr)) < 0) _exit(127);
    execv(argv[0], argv.data());
    _exit(127);
  }
  return pid;
}

inline int wait_exit(pid_t pid) {
  int st = 0;
  waitpid(pid, &st, 0);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

inline int run_to_end(const std::vector<std::string>& args) { return wait_exit(spawn(args)); }

// stdout and stderr of a command, then "exit=<code>"; stdout alone when `with_stderr` is false.
inline std::string run_capture(const std::vector<std::string>& args, bool with_stderr = true) {
  std::string cmd;
  for (const auto& a : args) cmd += "'" + a + "' ";
  std::string out;
  FILE* p = popen((cmd + (with_stderr ? " 2>&1" : " 2>/dev/null") + "; echo \"exit=$?\"").c_str(), "r");
  char buf[4096];
  while (p && std::fgets(buf, sizeof buf, p)) out += buf;
  if (p) pclose(p);
  return out;
}

inline std::string read_bytes(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), {}};
}

// A copy of the shared opt-mini's files in `to` (created; files there replaced), to alter one way.
inline fs::path copy_opt_mini(const fs::path& to) {
  fs::create_directories(to);
  for (const auto& e : fs::directory_iterator(kShared / "models/opt-mini"))
    if (e.is_regular_file()) fs::copy_file(e.path(), to / e.path().filename(), fs::copy_options::overwrite_existing);
  return to;
}

// The file offsets [begin, end) of `tensor`'s data in `model`/model.safetensors.
inline std::pair<std::uint64_t, std::uint64_t> tensor_file_range(const fs::path& model, const std::string& tensor) {
  const auto bytes = read_bytes(model / "model.safetensors");
  std::uint64_t header = 0;
  for (int i = 0; i < 8; ++i) header |= static_cast<std::uint64_t>(static_cast<unsigned char>(bytes[i])) << (8 * i);
  const auto range = nlohmann::json::parse(bytes.substr(8, header)).at(tensor).at("data_offsets");
  return {8 + header + range[0].get<std::uint64_t>(), 8 + header + range[1].get<std::uint64_t>()};
}

// A shell command line running `args` (each quoted) with passive OpenMP waiting, for run().
inline std::string shell_command(const std::vector<std::string>& args) {
  std::string cmd = "OMP_WAIT_POLICY=PASSIVE ";
  for (const auto& s : args) cmd += "'" + s + "' ";
  return cmd;
}

// The override "eval.sets=[{name: a, preset: text, path: P}, ...]": one set per name, all of `path`.
inline std::string eval_sets_arg(const std::vector<std::string>& names, const std::string& path) {
  std::string arg = "eval.sets=[";
  for (std::size_t i = 0; i < names.size(); ++i)
    arg += (i ? ", " : "") + std::string("{name: ") + names[i] + ", preset: text, path: " + path + "}";
  return arg + "]";
}

// The records of a metrics file (JSON lines) with the given event.
inline std::vector<nlohmann::json> records(const fs::path& metrics, const std::string& event) {
  std::vector<nlohmann::json> out;
  std::ifstream f(metrics);
  for (std::string line; std::getline(f, line);) {
    auto j = nlohmann::json::parse(line);
    if (j.value("event", "") == event) out.push_back(j);
  }
  return out;
}

// Sends `sig` to `pid` once `metrics` holds a record of `event`, and returns its exit code
// (-1, with a test failure, when the process ended before such a record).
inline int stop_after_record(pid_t pid, const fs::path& metrics, const std::string& event, int sig = SIGUSR1) {
  while (records(metrics, event).empty()) {
    if (waitpid(pid, nullptr, WNOHANG) == pid) {
      ADD_FAILURE() << "the process ended before its first '" << event << "' record";
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  kill(pid, sig);
  return wait_exit(pid);
}

inline std::int64_t committed_layers(const fs::path& ckpt) {
  try {
    std::ifstream f(ckpt / "manifest.json");
    if (!f) return 0;
    const auto j = nlohmann::json::parse(f);
    std::int64_t n = 0;
    for (const auto& v : j.at("layers"))
      if (v.is_object() && v.value("status", "") == "committed") ++n;
    return n;
  } catch (...) {
    return 0;  // being replaced: readers see the old or the new file, never a torn one
  }
}

}  // namespace scalpel_test

// Skips the calling test where ../shared (the models and texts) is absent.
#define NEED_SHARED()                                                                  \
  if (!scalpel_test::fs::exists(scalpel_test::kShared / "models/opt-mini/config.json")) \
  GTEST_SKIP() << "../shared/models not present: skipping"
