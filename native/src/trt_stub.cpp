// Builds without TensorRT: CMakeLists.txt compiles this file instead of trt.cpp where NvInfer.h
// (TensorRT >= 10), libnvinfer or the CUDA runtime were not found. Built engines of backend "trt"
// are then refused with one clear line (the ONNX Runtime backends of `edgeprune build` run).
#include "common.hpp"
#include "runtime.hpp"

namespace edgeprune {

std::unique_ptr<Engine> make_trt_engine(const std::string& path, int, int) {
  fail(EDGEPRUNE_UNSUPPORTED, path + ": a TensorRT engine, but this libedgeprune was built without TensorRT "
                              "(NvInfer.h and the CUDA runtime were not found when it was compiled; see docs/native.md); "
                              "build the set with an ONNX Runtime backend (ort-cpu, ort-cuda, ort-trt)");
}

}  // namespace edgeprune
