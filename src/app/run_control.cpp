// Stop signals and the watchdog (see run_control.hpp).
#include "scalpel/app/run_control.hpp"

#include <unistd.h>

#include <atomic>
#include <csignal>
#include <initializer_list>
#include <cstdio>
#include <limits>
#include <cstdlib>
#include <chrono>

#include "scalpel/core/error.hpp"

namespace scalpel::app {
namespace {

volatile std::sig_atomic_t g_stop = 0;

constexpr const char* kKeptNote = "stopping after the current step (it is kept, rerun to resume)";
std::atomic<const char*> g_note{kKeptNote};  // lock-free: read in the handlers
std::atomic<int> g_rank{-1};                 // the rank that says what a stop does (-1: unknown, says it)
std::atomic<bool> g_launched{false};         // one of several ranks mpirun/srun started (see on_stop)

void write_stderr(const char* s) {
  std::size_t n = 0;
  while (s[n] != '\0') ++n;
  [[maybe_unused]] const auto w = ::write(STDERR_FILENO, s, n);
}

// SIGTERM/SIGUSR1: the stop is honoured only at the next stopping point, which can be many minutes
// away (a layer of OPT-175B, an LLM Surgeon shot); the first one says at once, on rank 0 only, that
// it was received and what happens next, so that a log shows when the signal came. A SIGTERM to a
// rank that mpirun or srun started is their way of ending it (after an MPI_Abort of another rank,
// a second Ctrl-C): it is not announced as a stop (the wrappers and batch scripts ask for a stop
// with SIGUSR1).
void on_stop(int sig) {
  const bool first = g_stop == 0;
  g_stop = sig;
  if (!first || g_rank.load() > 0 || (sig == SIGTERM && g_launched.load())) return;
  // One write, so that a log line of another thread cannot land inside it.
  char line[512];
  std::size_t n = 0;
  for (const char* part : {sig == SIGTERM ? "scalpel: SIGTERM received: " : "scalpel: SIGUSR1 received: ",
                           g_note.load(), "\n"})
    for (const char* c = part; *c != '\0' && n + 1 < sizeof line; ++c) line[n++] = *c;
  line[n] = '\0';
  write_stderr(line);
}

// The first of the launcher variables `names` set to an integer >= lowest, else `none`.
int launcher_value(std::initializer_list<const char*> names, long lowest, int none) {
  for (const char* name : names) {
    const char* v = std::getenv(name);
    if (v == nullptr || *v == '\0') continue;
    char* end = nullptr;
    const long r = std::strtol(v, &end, 10);
    if (*end == '\0' && r >= lowest) return static_cast<int>(r);
  }
  return none;
}

// The ranks of the job before MPI starts (0: none says). A batch script's own environment
// (SLURM_PROCID 0, no step) is not a launched job.
int launcher_size() { return launcher_value({"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS"}, 1, 0); }

// The rank of this process before MPI starts (-1: none says). Open MPI's and PMIx's names come
// first: a batch shell's SLURM_PROCID (0) is inherited by the ranks mpirun starts inside a job.
int launcher_rank() {
  return launcher_value({"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"}, 0, -1);
}

// Ctrl-C: the first asks for the same stop as SIGTERM (the layer or shot under way is committed,
// exit 75, resumable) and says so; a second one ends the process at once, as Ctrl-C usually does.
void on_interrupt(int sig) {
  if (g_stop == SIGINT) {
    std::signal(SIGINT, SIG_DFL);
    std::raise(SIGINT);
    return;
  }
  g_stop = sig;
  write_stderr("\nscalpel: interrupt: ");
  write_stderr(g_note.load());
  write_stderr("; Ctrl-C again to abort at once\n");
}

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

void install_stop_signals() {
  if (g_rank.load() < 0) g_rank.store(launcher_rank());
  if (launcher_size() > 1) g_launched.store(true);
  struct sigaction sa {};
  sa.sa_handler = on_stop;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;  // MPI and file calls carry on; the flag is read between layers
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGUSR1, &sa, nullptr);
  // A SIGINT ignored from the start (a background job of a script) stays ignored, as is the custom.
  struct sigaction old {};
  if (sigaction(SIGINT, nullptr, &old) == 0 && old.sa_handler == SIG_IGN) return;
  sa.sa_handler = on_interrupt;
  sigaction(SIGINT, &sa, nullptr);
}

int stop_signal() { return g_stop; }

void set_stop_note_rank(int rank, int ranks) {
  g_rank.store(rank);
  if (ranks > 1) g_launched.store(true);
}

void set_interrupt_note(const char* note) { g_note.store(note != nullptr ? note : kKeptNote); }

Watchdog::Watchdog(double timeout_seconds, int rank) : timeout_(timeout_seconds), rank_(rank) {
  last_ns_ = now_ns();
  if (timeout_ > 0) thread_ = std::thread([this] { run(); });
}

Watchdog::~Watchdog() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    done_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void Watchdog::beat(const char* phase, std::int64_t layer) {
  phase_ = phase;
  layer_ = layer;
  last_ns_ = now_ns();
}

void Watchdog::suspend(const char* phase) {
  phase_ = phase;
  last_ns_ = std::numeric_limits<std::int64_t>::max();  // "idle" stays negative until the next beat
}

void Watchdog::run() {
  std::unique_lock<std::mutex> lock(mu_);
  const auto tick = std::chrono::milliseconds(static_cast<int>(std::min(1000.0, timeout_ * 250.0)) + 1);
  while (!done_) {
    cv_.wait_for(lock, tick);
    if (done_) break;
    const double idle = static_cast<double>(now_ns() - last_ns_.load()) * 1e-9;
    if (idle > timeout_) {
      std::fprintf(stderr,
                   "scalpel: error (rank %d): watchdog: no progress for %.0f s (layer %lld, %s); a peer rank is "
                   "hung or dead, or the file system stalls; aborting (parallel.watchdog_seconds = %g)\n",
                   rank_, idle, static_cast<long long>(layer_.load()), phase_.load(), timeout_);
      std::fflush(stderr);
      // No MPI from this thread (MPI_THREAD_FUNNELED): the launcher sees this rank exit non-zero
      // and ends the job.
      std::_Exit(kExitWatchdog);
    }
  }
}

void ensure_passive_wait_policy(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr) return;
  ::setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
  ::execv("/proc/self/exe", argv);  // returns only on failure: run on with the default policy
}

}  // namespace scalpel::app
