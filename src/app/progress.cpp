// Progress lines and the metrics file (see progress.hpp).
#include "scalpel/app/progress.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <utility>

#include "scalpel/core/error.hpp"
#include "scalpel/core/log.hpp"

namespace scalpel::app {

Progress::Progress(std::string what, std::int64_t total, std::string unit, double interval_s, bool enabled,
                   std::int64_t start)
    : what_(std::move(what)), unit_(std::move(unit)), total_(total), start_(start), interval_(interval_s),
      enabled_(enabled && interval_s > 0) {}

std::string Progress::eta_str(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const auto t = static_cast<long long>(s + 0.5);
  if (t >= 3600) return fmt::format("{}h{:02}m", t / 3600, (t % 3600) / 60);
  if (t >= 60) return fmt::format("{}m{:02}s", t / 60, t % 60);
  return fmt::format("{}s", t);
}

void Progress::update(std::int64_t done, std::int64_t tokens) {
  if (!enabled_) return;
  const double now = timer_.seconds();
  if (now - last_ < interval_ && done < total_) return;
  last_ = now;
  const double frac = total_ > 0 ? static_cast<double>(done) / static_cast<double>(total_) : 1.0;
  const double left = static_cast<double>(total_ - done), ran = static_cast<double>(done - start_);
  const double eta = ran > 0 ? now * left / ran : NAN;
  const std::string rate = tokens > 0 && now > 0 ? fmt::format(", {:.0f} tok/s", tokens / now) : "";  // none counted
  log::info("{}: {}/{} {} ({:.0f}%){}, elapsed {}, ETA {}", what_, done, total_, unit_, 100 * frac, rate,
            eta_str(now), eta_str(eta));
}

void Progress::finish() { last_ = -1e300; }

Metrics::Metrics(const std::string& path) : path_(path) {
  if (path.empty()) return;
  namespace fs = std::filesystem;
  const fs::path p(path);
  std::error_code ec;
  // Its folder and the missing ones above it are created with the file by the first record, so
  // that a run failing before it leaves no empty output folder (`scalpel eval` of a model with a
  // missing tensor left one); the nearest folder that exists must take them.
  fs::path base = p.has_parent_path() ? p.parent_path() : fs::path(".");
  while (!fs::exists(base, ec) && base.has_parent_path() && base != base.parent_path()) base = base.parent_path();
  if (!fs::exists(base, ec)) base = ".";
  if (!fs::is_directory(base, ec))
    SCALPEL_RUNTIME_ERROR("{}: cannot open the metrics file: {} is a file, not a folder", path, base.string());
  // An existing file is opened now; a new one is created by the first record, so a run that fails
  // before it leaves no file (nothing is ever removed). Either way, a path that cannot be written
  // fails here, before any work.
  if (fs::exists(p, ec)) {
    open_file(false);
  } else if (::access(base.c_str(), W_OK) != 0) {
    SCALPEL_RUNTIME_ERROR("{}: cannot create the metrics file: {}", path, std::strerror(errno));
  }
}

void Metrics::open_file(bool create) {
  if (create) {
    std::error_code ec;
    const std::filesystem::path p(path_);
    if (p.has_parent_path()) std::filesystem::create_directories(p.parent_path(), ec);
    if (ec) SCALPEL_RUNTIME_ERROR("{}: cannot create its folder: {}", path_, ec.message());
  }
  fd_ = ::open(path_.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC | (create ? O_CREAT : 0), 0644);
  if (fd_ < 0) SCALPEL_RUNTIME_ERROR("{}: cannot open the metrics file for writing: {}", path_, std::strerror(errno));
}

Metrics::Metrics(Metrics&& o) noexcept : path_(std::move(o.path_)), fd_(std::exchange(o.fd_, -1)) { o.path_.clear(); }

Metrics& Metrics::operator=(Metrics&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    path_ = std::move(o.path_);
    o.path_.clear();
    fd_ = std::exchange(o.fd_, -1);
  }
  return *this;
}

Metrics::~Metrics() {
  if (fd_ >= 0) ::close(fd_);
}

void Metrics::write(nlohmann::json record) {
  if (path_.empty()) return;
  if (fd_ < 0) open_file(true);
  const auto now = std::chrono::system_clock::now();
  const std::time_t t = std::chrono::system_clock::to_time_t(now);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  record["time"] = buf;
  const std::string line = record.dump() + "\n";
  struct stat st {};
  const off_t end = ::fstat(fd_, &st) == 0 ? st.st_size : -1;
  // SIGXFSZ would end the process at a file-size limit instead of the write failing: ignored
  // for the write (Slurm and ulimit -f set such limits).
  struct sigaction ign {}, old {};
  ign.sa_handler = SIG_IGN;
  sigemptyset(&ign.sa_mask);
  ::sigaction(SIGXFSZ, &ign, &old);
  std::size_t done = 0;
  int err = 0;
  while (done < line.size()) {
    const auto n = ::write(fd_, line.data() + done, line.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      err = n < 0 ? errno : EIO;
      break;
    }
    done += static_cast<std::size_t>(n);
  }
  ::sigaction(SIGXFSZ, &old, nullptr);
  if (err == 0) return;
  // No half record left: cut back what this write added, unless another writer appended since.
  if (end >= 0 && done > 0 && ::fstat(fd_, &st) == 0 && st.st_size == end + static_cast<off_t>(done))
    [[maybe_unused]] const int r = ::ftruncate(fd_, end);
  SCALPEL_RUNTIME_ERROR("{}: cannot write the metrics record ({}): {}", path_, record.value("event", "?"),
                        std::strerror(err));
}

}  // namespace scalpel::app
