// Progress and metrics output.
#include "scalpel/app/progress.hpp"

#include <chrono>
#include <cmath>
#include <ctime>
#include <filesystem>

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

Metrics::Metrics(const std::string& path) {
  if (path.empty()) return;
  const std::filesystem::path p(path);
  std::error_code ec;
  if (p.has_parent_path()) std::filesystem::create_directories(p.parent_path(), ec);
  out_.open(p, std::ios::app);
  if (!out_) SCALPEL_RUNTIME_ERROR("{}: cannot open the metrics file for writing", path);
}

void Metrics::write(nlohmann::json record) {
  if (!out_.is_open()) return;
  const auto now = std::chrono::system_clock::now();
  const std::time_t t = std::chrono::system_clock::to_time_t(now);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  record["time"] = buf;
  out_ << record.dump() << '\n';
  out_.flush();
}

}  // namespace scalpel::app
