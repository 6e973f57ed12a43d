// Builds without OpenVINO: CMakeLists.txt compiles this file instead of openvino.cpp where the
// openvino package's C headers (openvino/c/openvino.h) were not found. Built engines of backend
// "openvino" are then refused with one line naming the package; every other backend runs.
#include "common.hpp"
#include "openvino.hpp"
#include "runtime.hpp"

namespace edgeprune {

class OvContext {};

static const char* const kWithout =
    "engines of backend openvino need libedgeprune's OpenVINO backend, and this build has none (the openvino "
    "package's C headers were not found when it was compiled): pip install \"edgeprune[openvino]\" (the openvino "
    "package), then rebuild with native/build.sh; or run them in the Python runtime (edgeprune.runtime.Runtime)";

std::shared_ptr<OvContext> open_openvino(const std::string&) { fail(EDGEPRUNE_UNSUPPORTED, kWithout); }

std::unique_ptr<Engine> make_openvino_engine(std::shared_ptr<OvContext>, const std::string& path, int, int, int) {
  fail(EDGEPRUNE_UNSUPPORTED, path + ": " + kWithout);
}

}  // namespace edgeprune
