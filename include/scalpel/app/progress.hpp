// Progress lines with rate and ETA for long work (rank 0 prints), and the JSON-lines metrics file.
#pragma once
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "scalpel/core/timer.hpp"

namespace scalpel::app {

class Progress {
 public:
  // `unit` names what is counted ("windows"); interval 0 disables; only `enabled` ranks print.
  // `start`: units done by an earlier run (a resume); the ETA follows this run's pace.
  Progress(std::string what, std::int64_t total, std::string unit, double interval_s, bool enabled,
           std::int64_t start = 0);
  // Reports that `done` units are finished in all (start included), `tokens` tokens so far in this
  // run (for the rate).
  void update(std::int64_t done, std::int64_t tokens);
  void finish();
  static std::string eta_str(double seconds);

 private:
  std::string what_, unit_;
  std::int64_t total_, start_;
  double interval_;
  bool enabled_;
  Timer timer_;
  double last_ = 0;
};

// The JSON-lines metrics file: one record per line, appended whole or not at all.
class Metrics {
 public:
  Metrics() = default;
  // Appends to `path` (its folder created; an existing file opened now, a new one created by the
  // first record, so a run that fails before it leaves no empty file); a path that cannot be
  // written is a runtime Error naming it, here. Empty path: a sink that drops records.
  explicit Metrics(const std::string& path);
  Metrics(Metrics&& o) noexcept;
  Metrics& operator=(Metrics&& o) noexcept;
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;
  ~Metrics();
  // Adds "time" (UTC ISO 8601) and appends the record as one line. A failed write (a full disk, a
  // file-size limit) cuts the file back to its previous end and is a runtime Error naming it.
  void write(nlohmann::json record);

 private:
  void open_file(bool create);
  std::string path_;
  int fd_ = -1;
};

}  // namespace scalpel::app
