// Backend registry: picks the implementation named in the config.
#include "scalpel/backend/backend.hpp"

#include "scalpel/core/error.hpp"

namespace scalpel {

std::unique_ptr<Backend> make_backend(const std::string& device, int threads) {
  if (device == "cpu") return make_cpu_backend(threads);
  if (device == "cuda")
    SCALPEL_INPUT_ERROR("device 'cuda': this scalpel was built without the CUDA backend "
                        "(configure on a machine with nvcc; see README, GPU)");
  SCALPEL_INPUT_ERROR("device '{}' is not one of: cpu, cuda", device);
}

}  // namespace scalpel
