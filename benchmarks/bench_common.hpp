// Shared by the benchmark executables: medians of repeated timings, the provenance every JSON
// result carries (date, machine, commit, command), writing the result, and an error turned into a
// message and exit code 2 instead of std::terminate's abort.
#pragma once
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <fstream>
#include <iostream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "bench_commit.hpp"  // SCALPEL_BENCH_COMMIT, written at build time (cmake/commit_id.cmake)
#include "scalpel/core/timer.hpp"

namespace scalpel::bench {

inline double median(std::vector<double> v) {
  if (v.empty()) throw std::invalid_argument("median of no timings (--repeats must be >= 1)");
  std::sort(v.begin(), v.end());
  const auto n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Median wall time of `repeats` calls of f (the caller warms up first).
template <class F>
double median_seconds(int repeats, F&& f) {
  std::vector<double> t;
  for (int r = 0; r < repeats; ++r) {
    Timer tm;
    f();
    t.push_back(tm.seconds());
  }
  return median(t);
}

// Where and from what a result was measured: UTC date, host, CPU model and cores, the commit the
// benchmark was built from (with "-dirty" for uncommitted changes) and the command line.
inline nlohmann::json provenance(int argc, char** argv) {
  char date[32];
  const std::time_t now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm utc{};
  gmtime_r(&now, &utc);
  std::strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", &utc);
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  std::string cpu = "unknown";
  std::ifstream info("/proc/cpuinfo");
  for (std::string line; std::getline(info, line);)
    if (line.rfind("model name", 0) == 0 && line.find(':') != std::string::npos) {
      cpu = line.substr(line.find(':') + 2);
      break;
    }
  std::string command;
  for (int i = 0; i < argc; ++i) command += (i ? " " : "") + std::string(argv[i]);
  return {{"date", date},
          {"host", host},
          {"cpu", cpu},
          {"cores", std::thread::hardware_concurrency()},
          {"commit", SCALPEL_BENCH_COMMIT},
          {"command", command}};
}

// Prints j on stdout and, when `out` is given, writes it there; an error naming the file when it
// cannot be written (a result a script waits for must not vanish with exit code 0).
inline void emit_json(const nlohmann::json& j, const std::string& out, int indent = 2) {
  std::cout << j.dump(indent) << std::endl;
  if (out.empty()) return;
  std::ofstream f(out, std::ios::trunc);
  f << j.dump(indent) << '\n';
  f.close();
  if (!f) throw std::runtime_error("--out " + out + ": cannot write the result: " + std::strerror(errno));
}

// Runs body() and returns its exit code; an exception becomes "<prog>: error: <what>" on stderr and
// exit code 2.
template <class F>
int guarded(const char* prog, F&& body) {
  try {
    return body();
  } catch (const std::exception& e) {
    std::cerr << prog << ": error: " << e.what() << '\n';
    return 2;
  }
}

}  // namespace scalpel::bench
