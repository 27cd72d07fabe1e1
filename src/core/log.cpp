// spdlog set-up: one stderr sink, a pattern with the rank.
#include "scalpel/core/log.hpp"

#include <spdlog/sinks/stdout_color_sinks.h>

#include "scalpel/core/error.hpp"

namespace scalpel::log {
namespace {
int g_rank = 0;
}

void init(int rank, int world, const std::string& level) {
  g_rank = rank;
  auto logger = spdlog::stderr_color_mt("scalpel");
  const std::string who = world > 1 ? fmt::format("[rank {}/{}] ", rank, world) : "";
  logger->set_pattern("[%H:%M:%S.%e] [%^%l%$] " + who + "%v");
  spdlog::set_default_logger(logger);
  set_level(level);
}

bool valid_level(const std::string& level) {
  return spdlog::level::from_str(level) != spdlog::level::off || level == "off";
}

void set_level(const std::string& level) {
  if (!valid_level(level))
    SCALPEL_INPUT_ERROR("unknown log level '{}' (trace, debug, info, warn, error, off)", level);
  spdlog::default_logger()->set_level(spdlog::level::from_str(level));
}

int rank() { return g_rank; }

}  // namespace scalpel::log
