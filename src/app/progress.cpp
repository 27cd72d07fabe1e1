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
  const std::filesystem::path p(path);
  std::error_code ec;
  if (p.has_parent_path()) std::filesystem::create_directories(p.parent_path(), ec);
  created_ = !std::filesystem::exists(p, ec);
  fd_ = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) {
    const int err = errno;
    const auto parent = p.has_parent_path() ? p.parent_path() : std::filesystem::path(".");
    if (std::filesystem::exists(parent, ec) && !std::filesystem::is_directory(parent, ec))
      SCALPEL_RUNTIME_ERROR("{}: cannot open the metrics file: {} is a file, not a folder", path, parent.string());
    SCALPEL_RUNTIME_ERROR("{}: cannot open the metrics file for writing: {}", path, std::strerror(err));
  }
}

Metrics::Metrics(Metrics&& o) noexcept
    : path_(std::move(o.path_)), fd_(std::exchange(o.fd_, -1)), created_(o.created_), written_(o.written_) {}

Metrics& Metrics::operator=(Metrics&& o) noexcept {
  if (this != &o) {
    close();
    path_ = std::move(o.path_);
    fd_ = std::exchange(o.fd_, -1);
    created_ = o.created_;
    written_ = o.written_;
  }
  return *this;
}

Metrics::~Metrics() { close(); }

void Metrics::close() {
  if (fd_ < 0) return;
  struct stat st {};
  const bool empty = ::fstat(fd_, &st) == 0 && st.st_size == 0;
  ::close(fd_);
  fd_ = -1;
  if (created_ && !written_ && empty) ::unlink(path_.c_str());
}

void Metrics::write(nlohmann::json record) {
  if (fd_ < 0) return;
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
  if (err == 0) {
    written_ = true;
    return;
  }
  if (end >= 0 && done > 0) [[maybe_unused]] const int r = ::ftruncate(fd_, end);  // no half record left
  SCALPEL_RUNTIME_ERROR("{}: cannot write the metrics record ({}): {}", path_, record.value("event", "?"),
                        std::strerror(err));
}

}  // namespace scalpel::app
