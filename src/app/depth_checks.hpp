// The checks of a `scalpel depth` job that need only the config and the model's config.json, shared
// by the run (depth_run.cpp) and its plan (plan_depth.cpp) so that both refuse the same jobs with
// the same messages. Private to app.
#pragma once
#include <cstdint>
#include <vector>

#include "scalpel/app/config.hpp"
#include "scalpel/model/spec.hpp"

namespace scalpel::app {

// Input Errors naming the key (parallel.stages, parallel.data against `ranks`, depth.remove,
// depth.protect, depth.merge); sets n to the blocks to remove and returns the protected mask.
std::vector<bool> check_depth(const Config& cfg, const model::ModelSpec& spec, std::int64_t& n, int ranks);
// laco: depth.windows (of nseq calibration windows) must make a batch for every rank; an input
// Error naming depth.windows otherwise.
void check_laco_windows(const Config& cfg, std::int64_t nseq, int ranks);

}  // namespace scalpel::app
