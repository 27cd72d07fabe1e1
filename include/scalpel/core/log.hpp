// Logging through spdlog, with the MPI rank in every line once dist has told us who we are.
// Only rank 0 logs at info level by default; every rank logs warnings and errors.
#pragma once
#include <spdlog/spdlog.h>

#include <string>

namespace scalpel::log {

// Called once by the app after MPI start: sets the "[rank r/n]" prefix and the level.
void init(int rank, int world, const std::string& level = "info");
int rank();
// trace, debug, info, warn, error or off (input Error otherwise).
void set_level(const std::string& level);
bool valid_level(const std::string& level);

template <class... A>
void info(fmt::format_string<A...> f, A&&... a) {
  if (rank() == 0) spdlog::info(f, std::forward<A>(a)...);
}
template <class... A>
void debug(fmt::format_string<A...> f, A&&... a) {
  spdlog::debug(f, std::forward<A>(a)...);
}
template <class... A>
void warn(fmt::format_string<A...> f, A&&... a) {
  spdlog::warn(f, std::forward<A>(a)...);
}
template <class... A>
void error(fmt::format_string<A...> f, A&&... a) {
  spdlog::error(f, std::forward<A>(a)...);
}

}  // namespace scalpel::log
