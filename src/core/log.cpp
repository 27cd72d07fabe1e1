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
  const auto lvl = spdlog::level::from_str(level);
  if (lvl == spdlog::level::off && level != "off")
    SCALPEL_INPUT_ERROR("unknown log level '{}' (trace, debug, info, warn, error, off)", level);
  logger->set_level(lvl);
  spdlog::set_default_logger(logger);
}

int rank() { return g_rank; }

}  // namespace scalpel::log
