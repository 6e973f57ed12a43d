// Every build so far: the native TensorRT backend is not implemented yet, so built engines of backend
// "trt" are refused with one clear line (the ONNX Runtime backends of `edgeprune build` run).
#include "common.hpp"
#include "runtime.hpp"

namespace edgeprune {

std::unique_ptr<Engine> make_trt_engine(const std::string& path, int, int) {
  fail(EDGEPRUNE_UNSUPPORTED, path + ": a TensorRT engine, but this libedgeprune was built without TensorRT "
                              "(its TensorRT backend is not implemented yet); build the set with an ONNX Runtime backend (ort-cpu, ort-cuda, ort-trt)");
}

}  // namespace edgeprune
