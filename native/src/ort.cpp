#include "ort.hpp"

#include <dlfcn.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>

#include "common.hpp"

// The C++ API without its static initialisation: the API table comes from the library dlopen'ed at
// run time (OrtGetApiBase()->GetApi(N), then Ort::InitApi). Only this file includes the header.
#define ORT_API_MANUAL_INIT
#include "onnxruntime_cxx_api.h"

namespace edgeprune {

static std::string first_line(const std::string& text) {
  std::string s = text.substr(0, text.find('\n'));
  while (!s.empty() && (s.back() == '\r' || s.back() == ' ')) s.pop_back();
  return s.empty() ? "unknown error" : s;
}

// Error(code, prefix + ONNX Runtime's first line) for an Ort::Exception.
[[noreturn]] static void fail_ort(const Ort::Exception& e, edgeprune_code code, const std::string& prefix) {
  const OrtErrorCode ort_code = e.GetOrtErrorCode();
  // A model ORT cannot parse is a corrupt file, whoever asked for it.
  if (ort_code == ORT_INVALID_PROTOBUF || ort_code == ORT_INVALID_GRAPH || ort_code == ORT_NO_MODEL) code = EDGEPRUNE_CORRUPT;
  fail(code, prefix + first_line(e.what()));
}

// Runs `body` (calls into the C++ API), turning Ort::Exception into an Error: nothing ONNX Runtime's
// wrappers throw reaches the C ABI as such (api.cpp turns Errors into statuses).
template <typename F>
static auto ort_guard(edgeprune_code code, const std::string& prefix, F&& body) -> decltype(body()) {
  try {
    return body();
  } catch (const Ort::Exception& e) {
    fail_ort(e, code, prefix);
  }
}

struct OrtLibrary::Impl {
  Ort::Env env;
};

OrtLibrary::~OrtLibrary() = default;

std::shared_ptr<OrtLibrary> OrtLibrary::load(const std::string& requested) {
  // Never destroyed: the libraries stay loaded for the process (see the header).
  static std::mutex* mutex = new std::mutex;
  static auto* cache = new std::map<std::string, std::shared_ptr<OrtLibrary>>;
  static const OrtApi* bound = nullptr;  // the table Ort::InitApi was given
  static std::string bound_path;
  std::lock_guard<std::mutex> lock(*mutex);

  std::vector<std::string> candidates;
  if (!requested.empty()) {
    candidates.push_back(requested);
  } else if (const char* env = std::getenv("EDGEPRUNE_ORT_LIBRARY"); env && *env) {
    candidates.push_back(env);
  } else {
    candidates = {"libonnxruntime.so.1", "libonnxruntime.so"};
  }
  auto hit = cache->find(candidates.front());
  if (hit != cache->end()) return hit->second;

  void* handle = nullptr;
  std::string used, why;
  for (const auto& c : candidates) {
    if (c.find('/') != std::string::npos) {
      struct stat st;
      if (stat(c.c_str(), &st) != 0) {
        why = "no such file";
        used = c;
        continue;
      }
    }
    handle = dlopen(c.c_str(), RTLD_NOW | RTLD_LOCAL);
    used = c;
    if (handle) break;
    const char* e = dlerror();
    why = e ? e : "dlopen failed";
  }
  if (!handle) {
    if (why == "no such file")
      fail(EDGEPRUNE_NOT_FOUND, "ONNX Runtime library " + used + ": no such file (pass the onnxruntime wheel's "
                                "onnxruntime/capi/libonnxruntime.so.<version>)");
    fail(EDGEPRUNE_BACKEND, "cannot load ONNX Runtime library " + used + ": " + first_line(why));
  }
  using GetApiBase = const OrtApiBase* (*)();
  auto get_base = reinterpret_cast<GetApiBase>(dlsym(handle, "OrtGetApiBase"));
  if (!get_base) {
    dlclose(handle);
    fail(EDGEPRUNE_UNSUPPORTED, used + " is not an ONNX Runtime library (it exports no OrtGetApiBase)");
  }
  const OrtApiBase* base = get_base();
  // A copy: the text lives in the library, which is unloaded below when it is refused.
  const std::string version_text = base && base->GetVersionString ? base->GetVersionString() : "";
  const char* version = version_text.c_str();
  int major = 0, minor = 0;
  if (std::sscanf(version, "%d.%d", &major, &minor) != 2) major = minor = 0;
  // ONNX Runtime 1.x serves API version N = its minor version; ask for no newer than our header.
  // The wrappers used here call only functions of API <= kMinOrtApi, so an older table is enough.
  int library_api = major == 1 ? minor : (major > 1 ? ORT_API_VERSION : 0);
  if (library_api < kMinOrtApi) {
    dlclose(handle);
    fail(EDGEPRUNE_UNSUPPORTED, "ONNX Runtime " + std::string(*version ? version : "(unknown version)") + " at " + used +
                                    " is older than required (1." + std::to_string(kMinOrtApi) + " or newer)");
  }
  int want = std::min(library_api, static_cast<int>(ORT_API_VERSION));
  const OrtApi* api = base->GetApi(static_cast<uint32_t>(want));
  if (!api) {
    dlclose(handle);
    fail(EDGEPRUNE_UNSUPPORTED, "ONNX Runtime " + std::string(version) + " at " + used + " does not serve C API version " +
                                    std::to_string(want));
  }
  if (bound && bound != api)
    fail(EDGEPRUNE_UNSUPPORTED, "ONNX Runtime " + std::string(version) + " at " + used + ": this process already runs ONNX Runtime from " +
                                    bound_path + " (one ONNX Runtime library per process)");
  if (!bound) {
    Ort::InitApi(api);
    bound = api;
    bound_path = used;
  }
  std::shared_ptr<OrtLibrary> lib(new OrtLibrary);
  lib->path_ = used;
  lib->version_ = version;
  lib->api_version_ = want;
  lib->impl_ = ort_guard(EDGEPRUNE_BACKEND, "ONNX Runtime environment: ", [] {
    return std::unique_ptr<Impl>(new Impl{Ort::Env(ORT_LOGGING_LEVEL_ERROR, "edgeprune")});
  });
  (*cache)[candidates.front()] = lib;
  return lib;
}

std::vector<std::string> OrtLibrary::providers() const {
  return ort_guard(EDGEPRUNE_BACKEND, "ONNX Runtime providers: ", [] { return Ort::GetAvailableProviders(); });
}

static const std::map<std::string, std::string>& provider_names() {
  static const std::map<std::string, std::string> names = {
      {"cpu", "CPUExecutionProvider"}, {"cuda", "CUDAExecutionProvider"}, {"tensorrt", "TensorrtExecutionProvider"}};
  return names;
}

// The provider option structs have no C++ wrapper in ONNX Runtime 1.21: owned by a unique_ptr whose
// deleter is their release function.
struct TensorRTOptionsDeleter {
  void operator()(OrtTensorRTProviderOptionsV2* p) const { Ort::GetApi().ReleaseTensorRTProviderOptions(p); }
};
struct CUDAOptionsDeleter {
  void operator()(OrtCUDAProviderOptionsV2* p) const { Ort::GetApi().ReleaseCUDAProviderOptions(p); }
};

struct OrtModel::Impl {
  Ort::Session session{nullptr};
  Ort::MemoryInfo memory{nullptr};
};

OrtModel::OrtModel(std::shared_ptr<OrtLibrary> lib, const std::string& path, const std::string& provider, int threads)
    : lib_(std::move(lib)), impl_(new Impl), path_(path) {
  const std::string where = path + ": ";
  Ort::SessionOptions so = ort_guard(EDGEPRUNE_BACKEND, where, [&] {
    Ort::SessionOptions o;
    o.SetIntraOpNumThreads(threads);
    o.SetInterOpNumThreads(1);
    o.SetGraphOptimizationLevel(ORT_ENABLE_ALL);
    o.SetLogSeverityLevel(3);
    // Spinning intra-op threads keep cores busy after each run; a runtime switching engines per
    // frame then waits for them (edgeprune.runtime turns spinning off for the same reason).
    o.AddConfigEntry("session.intra_op.allow_spinning", "0");
    return o;
  });

  std::vector<std::string> available = lib_->providers();
  auto has = [&](const std::string& p) { return std::find(available.begin(), available.end(), provider_names().at(p)) != available.end(); };
  std::vector<std::string> wanted;
  if (provider == "auto") wanted = {"tensorrt", "cuda"};
  else if (provider == "cuda" || provider == "tensorrt") wanted = {provider};
  else if (provider != "cpu") fail(EDGEPRUNE_INVALID_ARGUMENT, "provider must be cpu, cuda, tensorrt or auto, got '" + provider + "'");
  provider_ = "cpu";
  for (const auto& p : wanted) {
    if (!has(p)) {
      if (provider == "auto") continue;
      std::string list;
      for (const auto& a : available) list += (list.empty() ? "" : ", ") + a;
      fail(EDGEPRUNE_UNSUPPORTED, "ONNX Runtime provider '" + p + "' is not available here (install onnxruntime-gpu on a "
                                  "machine with CUDA); available: " + list);
    }
    try {
      if (p == "tensorrt") {
        OrtTensorRTProviderOptionsV2* raw = nullptr;
        Ort::ThrowOnError(Ort::GetApi().CreateTensorRTProviderOptions(&raw));
        std::unique_ptr<OrtTensorRTProviderOptionsV2, TensorRTOptionsDeleter> options(raw);
        so.AppendExecutionProvider_TensorRT_V2(*options);
      } else {
        OrtCUDAProviderOptionsV2* raw = nullptr;
        Ort::ThrowOnError(Ort::GetApi().CreateCUDAProviderOptions(&raw));
        std::unique_ptr<OrtCUDAProviderOptionsV2, CUDAOptionsDeleter> options(raw);
        so.AppendExecutionProvider_CUDA_V2(*options);
      }
      provider_ = p;
      break;
    } catch (const Ort::Exception& e) {
      // Listed but unusable (no CUDA libraries on this machine): "auto" falls back, an explicit ask fails.
      if (provider == "auto") continue;
      fail_ort(e, EDGEPRUNE_UNSUPPORTED, where + "provider " + p + ": ");
    }
  }
  impl_->session = ort_guard(EDGEPRUNE_BACKEND, where + "ONNX Runtime cannot load it: ",
                             [&] { return Ort::Session(lib_->impl_->env, path.c_str(), so); });
  ort_guard(EDGEPRUNE_BACKEND, where, [&] {
    impl_->memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    Ort::AllocatorWithDefaultOptions alloc;
    for (int io = 0; io < 2; ++io) {
      const size_t n = io == 0 ? impl_->session.GetInputCount() : impl_->session.GetOutputCount();
      for (size_t i = 0; i < n; ++i) {
        TensorSpec spec;
        spec.name = (io == 0 ? impl_->session.GetInputNameAllocated(i, alloc) : impl_->session.GetOutputNameAllocated(i, alloc)).get();
        Ort::TypeInfo info = io == 0 ? impl_->session.GetInputTypeInfo(i) : impl_->session.GetOutputTypeInfo(i);
        ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
        if (info.GetONNXType() == ONNX_TYPE_TENSOR) {  // anything else has no shape (and is refused later)
          auto tensor = info.GetTensorTypeAndShapeInfo();
          type = tensor.GetElementType();
          spec.shape = tensor.GetShape();
        }
        for (auto& d : spec.shape)
          if (d < 0) d = 1;  // a dynamic batch axis runs one frame
        spec.type = static_cast<int>(type);
        (io == 0 ? inputs_ : outputs_).push_back(spec);
      }
    }
    return 0;
  });
}

OrtModel::~OrtModel() = default;

static size_t element_size(int type) {
  switch (type) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return 4;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: return 8;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return 2;
    default: return 1;
  }
}

void OrtModel::run(const std::vector<Binding>& in, const std::vector<Binding>& out) const {
  std::vector<Ort::Value> values;
  std::vector<const char*> names;
  values.reserve(in.size() + out.size());
  auto bind = [&](const Binding& b, const std::vector<TensorSpec>& specs) {
    const TensorSpec* spec = nullptr;
    for (const auto& s : specs)
      if (s.name == b.name) spec = &s;
    if (!spec) fail(EDGEPRUNE_CORRUPT, path_ + ": the model has no tensor named '" + std::string(b.name) + "'");
    size_t count = 1;
    for (int64_t d : spec->shape) count *= static_cast<size_t>(d);
    if (count * element_size(spec->type) != b.bytes)
      fail(EDGEPRUNE_CORRUPT, path_ + ": tensor '" + spec->name + "' has another size than its manifest says");
    values.push_back(ort_guard(EDGEPRUNE_BACKEND, path_ + ": ", [&] {
      return Ort::Value::CreateTensor(impl_->memory, b.data, b.bytes, spec->shape.data(), spec->shape.size(),
                                      static_cast<ONNXTensorElementDataType>(spec->type));
    }));
    names.push_back(b.name);
  };
  for (const auto& b : in) bind(b, inputs_);
  for (const auto& b : out) bind(b, outputs_);
  ort_guard(EDGEPRUNE_BACKEND, path_ + ": ONNX Runtime run failed: ", [&] {
    // Session::Run is thread-safe; the wrapper's method is merely not const.
    impl_->session.Run(Ort::RunOptions{nullptr}, names.data(), values.data(), in.size(), names.data() + in.size(),
                       values.data() + in.size(), out.size());
    return 0;
  });
}

}  // namespace edgeprune
