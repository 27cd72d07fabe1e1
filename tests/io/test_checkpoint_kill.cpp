// The crash-safety promise, tested with real SIGKILLs: ckpt_writer (tests/io/ckpt_writer_main.cpp)
// is killed at named durability points and at seeded random instants, at several writer counts,
// and rerun each time; every intermediate state must read back only committed, exact layers, and
// the finished checkpoint must be bitwise the one an uninterrupted run writes.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "io_test_util.hpp"
#include "scalpel/io/checkpoint.hpp"

namespace scalpel::io {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using test::read_file;
using test::TempDir;

constexpr std::int64_t kLayers = 10;
constexpr std::int64_t kRefWriters = 3;

pid_t spawn_writer(const fs::path& dir, std::int64_t writers, long sleep_us, const std::string& crash_at = "") {
  std::vector<std::string> args = {CKPT_WRITER_PATH, dir.string(), std::to_string(kLayers), std::to_string(writers),
                                   std::to_string(sleep_us)};
  if (!crash_at.empty()) {
    args.push_back("--crash-at");
    args.push_back(crash_at);
  }
  const fs::path log = dir.parent_path() / (dir.filename().string() + ".log");
  const pid_t pid = ::fork();
  if (pid == 0) {
    // Child: only async-signal-safe calls until exec.
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      ::dup2(fd, 1);
      ::dup2(fd, 2);
    }
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  return pid;
}

int wait_status(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return status;
}

// Runs the writer to completion; asserts a clean exit.
void run_to_completion(const fs::path& dir, std::int64_t writers) {
  const int st = wait_status(spawn_writer(dir, writers, 0));
  ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0)
      << "writer failed; log:\n" << read_file(dir.parent_path() / (dir.filename().string() + ".log"));
}

struct Reference {
  std::vector<LayerData> layers;
  std::map<std::string, std::string> file_bytes;  // shard file name -> bytes
};

bool same_tensor(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

// Everything of a layer that does not depend on the writer count must equal the reference.
void expect_layer_equal(const LayerData& got, const LayerData& want) {
  ASSERT_EQ(got.tensors.size(), want.tensors.size()) << "layer " << want.layer;
  for (std::size_t i = 0; i < want.tensors.size(); ++i) {
    const auto& g = got.tensors[i];
    const auto& w = want.tensors[i];
    EXPECT_EQ(g.name, w.name);
    EXPECT_TRUE(same_tensor(g.data, w.data)) << "layer " << want.layer << " tensor " << w.name << " differs";
    EXPECT_EQ(g.packed_mask, w.packed_mask) << "layer " << want.layer << " mask of " << w.name << " differs";
  }
  EXPECT_EQ(got.metrics, want.metrics) << "layer " << want.layer;
}

// The state a kill left: the manifest (if any) is valid, and every layer either reads back exactly
// as the reference or is not committed. Never partial data.
void check_intermediate(const fs::path& dir, const Reference& ref) {
  if (!fs::exists(dir / kManifestName)) return;  // killed before the first manifest was durable
  const Checkpoint c = Checkpoint::open_read(dir);
  for (std::int64_t l = 0; l < kLayers; ++l) {
    if (c.committed(l)) {
      expect_layer_equal(c.read_layer(l), ref.layers[l]);
    } else {
      EXPECT_THROW(c.read_layer(l), Error) << "uncommitted layer " << l << " was readable";
    }
  }
}

// The finished checkpoint: complete, every layer equal, same shard files byte for byte where the
// layer was written by the reference's writer count, no leftovers.
void check_final(const fs::path& dir, const Reference& ref) {
  const Checkpoint c = Checkpoint::open_read(dir);
  EXPECT_TRUE(c.complete());
  EXPECT_EQ(c.first_uncommitted(), kLayers);
  for (std::int64_t l = 0; l < kLayers; ++l) {
    expect_layer_equal(c.read_layer(l), ref.layers[l]);
    const auto entry = c.layer_entry(l);
    if (static_cast<std::int64_t>(entry.files.size()) == kRefWriters) {
      for (const auto& f : entry.files)
        EXPECT_TRUE(read_file(dir / f.file) == ref.file_bytes.at(f.file)) << f.file << " differs from the reference";
    }
  }
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    EXPECT_NE(e.path().extension(), ".tmp") << name;
    if (const auto p = parse_shard_file_name(name)) {
      bool recorded = false;
      for (const auto& f : c.layer_entry(p->first).files) recorded |= f.file == name;
      EXPECT_TRUE(recorded) << name << " is not recorded by the manifest";
    }
  }
}

class CheckpointKill : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ref_dir_ = new TempDir();
    const fs::path dir = ref_dir_->path() / "ref";
    run_to_completion(dir, kRefWriters);
    ref_ = new Reference();
    const Checkpoint c = Checkpoint::open_read(dir);
    for (std::int64_t l = 0; l < kLayers; ++l) ref_->layers.push_back(c.read_layer(l));
    for (const auto& e : fs::directory_iterator(dir))
      if (parse_shard_file_name(e.path().filename().string()))
        ref_->file_bytes[e.path().filename().string()] = read_file(e.path());
  }
  static void TearDownTestSuite() {
    delete ref_;
    delete ref_dir_;
  }
  static TempDir* ref_dir_;
  static Reference* ref_;
  TempDir work_;
};
TempDir* CheckpointKill::ref_dir_ = nullptr;
Reference* CheckpointKill::ref_ = nullptr;

TEST_F(CheckpointKill, ReferenceRunIsComplete) {
  ASSERT_EQ(ref_->layers.size(), static_cast<std::size_t>(kLayers));
  EXPECT_EQ(ref_->file_bytes.size(), static_cast<std::size_t>(kLayers * kRefWriters));
}

// The writer kills itself exactly at each durability point (the N-th time it passes it), then a
// rerun finishes the job.
TEST_F(CheckpointKill, AtEveryDurabilityPoint) {
  int case_no = 0;
  for (const char* point : {"shard.synced", "shard.renamed", "manifest.synced", "manifest.renamed"}) {
    for (int nth : {1, 2, 7, 12}) {  // 12 manifest writes per run: open, 10 commits, completion
      SCOPED_TRACE(std::string(point) + ":" + std::to_string(nth));
      const fs::path dir = work_.path() / ("case" + std::to_string(case_no++));
      const std::string crash_at = std::string(point) + ":" + std::to_string(nth);
      const int st = wait_status(spawn_writer(dir, kRefWriters, 0, crash_at));
      ASSERT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) << "writer was not killed at " << crash_at;
      const std::int64_t resume_at =
          fs::exists(dir / kManifestName) ? Checkpoint::open_read(dir).first_uncommitted() : 0;
      check_intermediate(dir, *ref_);
      run_to_completion(dir, kRefWriters);
      check_final(dir, *ref_);
      // The rerun resumed right after the last committed layer.
      const Checkpoint done = Checkpoint::open_read(dir);
      EXPECT_EQ(done.manifest()["runs"].back()["first_uncommitted"], resume_at);
    }
  }
}

// SIGKILL from outside at seeded random instants, several times per checkpoint, with the writer
// count changing between reruns (a resume at another rank count).
TEST_F(CheckpointKill, AtRandomInstantsWithChangingWriterCounts) {
  constexpr long kSleepUs = 1500;  // between steps, so that kills land in every phase
  // Calibrate: how long one uninterrupted run with these pauses takes on this machine.
  const auto t0 = std::chrono::steady_clock::now();
  run_to_completion(work_.path() / "timing", kRefWriters);
  const double full_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() +
      static_cast<double>(kLayers * (kRefWriters + 1) * kSleepUs) / 1000.0;

  std::mt19937_64 rng(20240611);
  int kills = 0, mid_layer_states = 0, mid_write_states = 0;
  for (int trial = 0; trial < 8; ++trial) {
    SCOPED_TRACE("trial " + std::to_string(trial));
    const fs::path dir = work_.path() / ("trial" + std::to_string(trial));
    std::int64_t last_committed = 0;
    for (int round = 0; round < 4; ++round) {
      const std::int64_t writers = 1 + static_cast<std::int64_t>(rng() % 3);
      // Aim within what is left of the work, so that most kills land before the writer is done.
      const double left = static_cast<double>(kLayers - last_committed) / static_cast<double>(kLayers);
      const double delay_ms = std::uniform_real_distribution<double>(0.0, full_ms * left)(rng);
      const pid_t pid = spawn_writer(dir, writers, kSleepUs);
      std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(delay_ms));
      ::kill(pid, SIGKILL);
      const int st = wait_status(pid);
      if (WIFSIGNALED(st)) {
        ASSERT_EQ(WTERMSIG(st), SIGKILL);
        ++kills;
      } else {
        ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << "writer failed";
      }
      check_intermediate(dir, *ref_);
      if (fs::exists(dir / kManifestName)) {
        const Checkpoint c = Checkpoint::open_read(dir);
        // Progress is never lost: committed layers stay committed across kills.
        EXPECT_GE(c.committed_count(), last_committed);
        last_committed = c.committed_count();
        for (const auto& e : fs::directory_iterator(dir)) {
          const std::string name = e.path().filename().string();
          if (const auto p = parse_shard_file_name(name); p && !c.committed(p->first))
            ++mid_layer_states;  // a kill between a shard's rename and the layer's commit
          if (e.path().extension() == ".tmp") ++mid_write_states;  // a kill inside a file write
        }
      }
    }
    run_to_completion(dir, 1 + static_cast<std::int64_t>(rng() % 3));
    check_final(dir, *ref_);
  }
  EXPECT_GE(kills, 20) << "too few kills landed before the writer finished";
  std::printf("random kills: %d landed; seen after them: %d renamed but uncommitted shard files, %d temp files "
              "of interrupted writes\n",
              kills, mid_layer_states, mid_write_states);
}

}  // namespace
}  // namespace scalpel::io
