// Stopping and hang detection for long runs (DESIGN.md section 8).
//  - SIGTERM and SIGUSR1 (Slurm's preemption warning) only set a flag; `scalpel prune` checks it
//    after each committed layer, every rank agreeing through one all-reduce, and exits with
//    kExitInterrupted (75) so that a batch script can requeue and the rerun resumes. A first
//    SIGINT (Ctrl-C) does the same and says so on stderr; a second one ends the process at once.
//  - The Watchdog turns a hang (a peer that stopped answering in a collective, a stuck file
//    system) into an abort: when no heartbeat came for its timeout it prints the rank, layer and
//    phase and ends the process with kExitWatchdog; the launcher then ends the other ranks.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>

namespace scalpel::app {

// OpenMP threads that spin after a parallel region take the cores from the next BLAS call (a
// SparseGPT or LLM Surgeon run twice as slow on 2 cores). libgomp reads OMP_WAIT_POLICY once, when
// it loads, so a process started without it restarts itself (execv of /proc/self/exe) with
// PASSIVE; call first thing in main, before MPI or any thread exists. A user's setting is kept.
void ensure_passive_wait_policy(char** argv);

// Installs the SIGTERM/SIGUSR1/SIGINT handlers (idempotent). The first stop signal says on stderr
// that it was received and what happens next, on rank 0 only (the launcher's rank variables tell
// it before MPI starts; set_stop_note_rank once MPI knows), and a SIGTERM only in a job of one
// process (mpirun and srun end the ranks of a larger job with it).
void install_stop_signals();
void set_stop_note_rank(int rank, int ranks);
// The signal that asked for a stop (0: none).
int stop_signal();
// What a first stop signal says will happen (a string with static storage; nullptr: the default "stopping
// after the current step (it is kept, rerun to resume)"), for runs that keep something else.
void set_interrupt_note(const char* note);
// prune.allocation: sensitivity's, during its estimate (the probes done are kept in the checkpoint).
inline constexpr const char* kSensitivityInterruptNote =
    "stopping after the sensitivity probe under way (the probes done are kept: a rerun goes on from there)";
// scalpel depth's: it checks after each ppl round or LaCo attempt, after the scoring and between
// evaluation sets, and keeps its progress in its state file.
inline constexpr const char* kDepthInterruptNote =
    "stopping after the ppl round or LaCo attempt under way, the scoring, or the evaluation set under way (the "
    "progress is kept: a rerun goes on from there)";

class Watchdog {
 public:
  // timeout_seconds <= 0: disabled.
  Watchdog(double timeout_seconds, int rank);
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;
  // Progress: records where the rank is and restarts the countdown.
  void beat(const char* phase, std::int64_t layer);
  // Stops the countdown until the next beat: for a phase with no heartbeat to give, such as the
  // ranks that wait while rank 0 alone writes the export.
  void suspend(const char* phase);

 private:
  void run();
  double timeout_;
  int rank_;
  std::atomic<std::int64_t> last_ns_{0}, layer_{-1};
  std::atomic<const char*> phase_{"start"};
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;
};

}  // namespace scalpel::app
