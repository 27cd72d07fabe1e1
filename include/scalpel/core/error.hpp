// Errors carry where they were raised (file:line) and what they concern (a file, key, tensor,
// layer or rank), so that main() can print one line a user can act on and exit non-zero.
#pragma once
#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace scalpel {

// What kind of failure, so that main() can choose an exit code without parsing messages.
enum class ErrorKind {
  input,     // bad user input: malformed file, wrong config key, missing tensor, too-short text
  internal,  // a broken invariant inside scalpel
  runtime,   // the environment failed: I/O, MPI, out of memory
};

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, std::string message, const char* file, int line)
      : std::runtime_error(std::move(message)), kind_(kind), where_(fmt::format("{}:{}", file, line)) {}
  ErrorKind kind() const noexcept { return kind_; }
  const std::string& where() const noexcept { return where_; }

 private:
  ErrorKind kind_;
  std::string where_;
};

// An Error that every rank of a communicator of `ranks` ranks raised alike, from work one rank did
// and shared (app/root_work.hpp). When that is the whole world, main prints it once and every rank
// ends with its exit code, with no MPI_Abort (whose banner, and every rank's copy of the message,
// buried the one line that matters).
class SharedError : public Error {
 public:
  SharedError(ErrorKind kind, std::string message, int ranks, const char* file, int line)
      : Error(kind, std::move(message), file, line), ranks_(ranks) {}
  int ranks() const noexcept { return ranks_; }

 private:
  int ranks_;
};

// Exit codes of the scalpel executable (documented in the README).
inline constexpr int kExitOk = 0;
inline constexpr int kExitInput = 2;     // bad input (config, files, shapes)
inline constexpr int kExitRuntime = 3;   // I/O, MPI, environment
inline constexpr int kExitInternal = 4;  // bug
// Stopped on request (SIGTERM/SIGUSR1) after committing the current layer: rerun to resume.
// 75 is EX_TEMPFAIL of sysexits.h ("try again later"); the Slurm scripts requeue on it.
inline constexpr int kExitInterrupted = 75;
// The watchdog saw no progress for parallel.watchdog_seconds (a hung or dead peer).
inline constexpr int kExitWatchdog = 6;

// The exit code of an error's kind.
inline constexpr int exit_code(ErrorKind k) {
  switch (k) {
    case ErrorKind::input: return kExitInput;
    case ErrorKind::runtime: return kExitRuntime;
    case ErrorKind::internal: return kExitInternal;
  }
  return kExitInternal;
}

}  // namespace scalpel

#define SCALPEL_THROW(kind, ...) \
  throw ::scalpel::Error((kind), ::fmt::format(__VA_ARGS__), __FILE__, __LINE__)

// Bad user input: the message must name the file/key/tensor concerned.
#define SCALPEL_INPUT_ERROR(...) SCALPEL_THROW(::scalpel::ErrorKind::input, __VA_ARGS__)
#define SCALPEL_CHECK_INPUT(cond, ...) \
  do {                                 \
    if (!(cond)) SCALPEL_INPUT_ERROR(__VA_ARGS__); \
  } while (0)

// Internal invariant.
#define SCALPEL_CHECK(cond, ...)                                                       \
  do {                                                                                 \
    if (!(cond))                                                                       \
      SCALPEL_THROW(::scalpel::ErrorKind::internal, "check failed: {}: {}", #cond,     \
                    ::fmt::format(__VA_ARGS__));                                       \
  } while (0)

#define SCALPEL_RUNTIME_ERROR(...) SCALPEL_THROW(::scalpel::ErrorKind::runtime, __VA_ARGS__)
