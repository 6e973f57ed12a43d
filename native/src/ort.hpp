// ONNX Runtime through its C++ API (onnxruntime_cxx_api.h, ORT_API_MANUAL_INIT), loaded at run time
// with dlopen: nothing links libonnxruntime, so the library works with the onnxruntime wheel's
// capi/libonnxruntime.so.<version> (which has no SONAME-named file to link against) or any system
// copy, whichever the caller points at. Every ONNX Runtime object is owned by its C++ wrapper (RAII);
// the wrappers' exceptions (Ort::Exception) never leave ort.cpp: they become Error lines.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace edgeprune {

// The oldest ONNX Runtime accepted: 1.14 is the first that runs opset 18, which export writes.
constexpr int kMinOrtApi = 14;

class OrtLibrary {
 public:
  // Loads (once per path, for the life of the process: ONNX Runtime keeps thread-local state and
  // registered handlers that make unloading it unsafe) and returns the library; throws Error. The
  // C++ API binds one ONNX Runtime per process (Ort::InitApi): a second, different library is refused.
  static std::shared_ptr<OrtLibrary> load(const std::string& path_or_empty);
  ~OrtLibrary();
  const std::string& version() const { return version_; }
  const std::string& path() const { return path_; }
  int api_version() const { return api_version_; }
  std::vector<std::string> providers() const;

 private:
  friend class OrtModel;
  struct Impl;  // the Ort::Env (ort.cpp)
  OrtLibrary() = default;
  std::unique_ptr<Impl> impl_;
  std::string path_, version_;
  int api_version_ = 0;
};

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  int type = 0;  // ONNXTensorElementDataType
};

// Input and output buffers of one run, owned by the caller; the output shapes are the session's.
struct Binding {
  const char* name;
  void* data;
  size_t bytes;
};

class OrtModel {
 public:
  // provider: "cpu", "cuda", "tensorrt" or "auto"; `ran` receives the provider the session got.
  OrtModel(std::shared_ptr<OrtLibrary> lib, const std::string& path, const std::string& provider, int threads);
  ~OrtModel();
  OrtModel(const OrtModel&) = delete;
  OrtModel& operator=(const OrtModel&) = delete;
  const std::vector<TensorSpec>& inputs() const { return inputs_; }
  const std::vector<TensorSpec>& outputs() const { return outputs_; }
  const std::string& provider() const { return provider_; }
  // Runs with every input and the listed outputs bound to caller memory; thread-safe.
  void run(const std::vector<Binding>& in, const std::vector<Binding>& out) const;

 private:
  struct Impl;  // the Ort::Session and Ort::MemoryInfo (ort.cpp)
  std::shared_ptr<OrtLibrary> lib_;
  std::unique_ptr<Impl> impl_;
  std::vector<TensorSpec> inputs_, outputs_;
  std::string provider_, path_;
};

}  // namespace edgeprune
