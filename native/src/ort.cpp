#include "ort.hpp"

#include <dlfcn.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>

#include "common.hpp"
#include "onnxruntime_c_api.h"

namespace edgeprune {

static std::string first_line(const std::string& text) {
  std::string s = text.substr(0, text.find('\n'));
  while (!s.empty() && (s.back() == '\r' || s.back() == ' ')) s.pop_back();
  return s.empty() ? "unknown error" : s;
}

void OrtLibrary::check(OrtStatus* status, int code, const std::string& prefix) const {
  if (!status) return;
  std::string message = first_line(api_->GetErrorMessage(status));
  OrtErrorCode ort_code = api_->GetErrorCode(status);
  api_->ReleaseStatus(status);
  edgeprune_code c = static_cast<edgeprune_code>(code);
  // A model ORT cannot parse is a corrupt file, whoever asked for it.
  if (ort_code == ORT_INVALID_PROTOBUF || ort_code == ORT_INVALID_GRAPH || ort_code == ORT_NO_MODEL) c = EDGEPRUNE_CORRUPT;
  fail(c, prefix + message);
}

std::shared_ptr<OrtLibrary> OrtLibrary::load(const std::string& requested) {
  // Never destroyed: the libraries stay loaded for the process (see the header).
  static std::mutex* mutex = new std::mutex;
  static auto* cache = new std::map<std::string, std::shared_ptr<OrtLibrary>>;
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
  std::shared_ptr<OrtLibrary> lib(new OrtLibrary);
  lib->handle_ = handle;
  lib->api_ = api;
  lib->path_ = used;
  lib->version_ = version;
  lib->api_version_ = want;
  lib->check(api->CreateEnv(ORT_LOGGING_LEVEL_ERROR, "edgeprune", &lib->env_), EDGEPRUNE_BACKEND,
             "ONNX Runtime environment: ");
  (*cache)[candidates.front()] = lib;
  return lib;
}

OrtLibrary::~OrtLibrary() {
  if (env_) api_->ReleaseEnv(env_);
}

std::vector<std::string> OrtLibrary::providers() const {
  char** names = nullptr;
  int count = 0;
  check(api_->GetAvailableProviders(&names, &count), EDGEPRUNE_BACKEND, "ONNX Runtime providers: ");
  std::vector<std::string> out(names, names + count);
  OrtStatus* released = api_->ReleaseAvailableProviders(names, count);
  if (released) api_->ReleaseStatus(released);
  return out;
}

static const std::map<std::string, std::string>& provider_names() {
  static const std::map<std::string, std::string> names = {
      {"cpu", "CPUExecutionProvider"}, {"cuda", "CUDAExecutionProvider"}, {"tensorrt", "TensorrtExecutionProvider"}};
  return names;
}

OrtModel::OrtModel(std::shared_ptr<OrtLibrary> lib, const std::string& path, const std::string& provider, int threads)
    : lib_(std::move(lib)), path_(path) {
  const OrtApi* api = lib_->api();
  const std::string where = path + ": ";
  OrtSessionOptions* so = nullptr;
  lib_->check(api->CreateSessionOptions(&so), EDGEPRUNE_BACKEND, where);
  struct Guard {
    const OrtApi* api;
    OrtSessionOptions* so;
    ~Guard() { api->ReleaseSessionOptions(so); }
  } guard{api, so};
  lib_->check(api->SetIntraOpNumThreads(so, threads), EDGEPRUNE_BACKEND, where);
  lib_->check(api->SetInterOpNumThreads(so, 1), EDGEPRUNE_BACKEND, where);
  lib_->check(api->SetSessionGraphOptimizationLevel(so, ORT_ENABLE_ALL), EDGEPRUNE_BACKEND, where);
  lib_->check(api->SetSessionLogSeverityLevel(so, 3), EDGEPRUNE_BACKEND, where);
  // Spinning intra-op threads keep cores busy after each run; a runtime switching engines per
  // frame then waits for them (edgeprune.runtime turns spinning off for the same reason).
  lib_->check(api->AddSessionConfigEntry(so, "session.intra_op.allow_spinning", "0"), EDGEPRUNE_BACKEND, where);

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
    OrtStatus* st = nullptr;
    if (p == "tensorrt") {
      OrtTensorRTProviderOptionsV2* o = nullptr;
      st = api->CreateTensorRTProviderOptions(&o);
      if (!st) {
        st = api->SessionOptionsAppendExecutionProvider_TensorRT_V2(so, o);
        api->ReleaseTensorRTProviderOptions(o);
      }
    } else {
      OrtCUDAProviderOptionsV2* o = nullptr;
      st = api->CreateCUDAProviderOptions(&o);
      if (!st) {
        st = api->SessionOptionsAppendExecutionProvider_CUDA_V2(so, o);
        api->ReleaseCUDAProviderOptions(o);
      }
    }
    if (!st) {
      provider_ = p;
      break;
    }
    // Listed but unusable (no CUDA libraries on this machine): "auto" falls back, an explicit ask fails.
    if (provider == "auto") {
      api->ReleaseStatus(st);
      continue;
    }
    lib_->check(st, EDGEPRUNE_UNSUPPORTED, where + "provider " + p + ": ");
  }
  lib_->check(api->CreateSession(lib_->env(), path.c_str(), so, &session_), EDGEPRUNE_BACKEND,
              where + "ONNX Runtime cannot load it: ");
  try {
    lib_->check(api->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &memory_), EDGEPRUNE_BACKEND, where);
    OrtAllocator* alloc = nullptr;
    lib_->check(api->GetAllocatorWithDefaultOptions(&alloc), EDGEPRUNE_BACKEND, where);
    for (int io = 0; io < 2; ++io) {
      size_t n = 0;
      lib_->check(io == 0 ? api->SessionGetInputCount(session_, &n) : api->SessionGetOutputCount(session_, &n), EDGEPRUNE_BACKEND, where);
      for (size_t i = 0; i < n; ++i) {
        TensorSpec spec;
        char* name = nullptr;
        lib_->check(io == 0 ? api->SessionGetInputName(session_, i, alloc, &name) : api->SessionGetOutputName(session_, i, alloc, &name),
                    EDGEPRUNE_BACKEND, where);
        spec.name = name;
        lib_->check(api->AllocatorFree(alloc, name), EDGEPRUNE_BACKEND, where);
        OrtTypeInfo* info = nullptr;
        lib_->check(io == 0 ? api->SessionGetInputTypeInfo(session_, i, &info) : api->SessionGetOutputTypeInfo(session_, i, &info),
                    EDGEPRUNE_BACKEND, where);
        const OrtTensorTypeAndShapeInfo* tensor = nullptr;
        OrtStatus* st = api->CastTypeInfoToTensorInfo(info, &tensor);
        size_t dims = 0;
        ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
        if (!st && tensor) st = api->GetTensorElementType(tensor, &type);
        if (!st && tensor) st = api->GetDimensionsCount(tensor, &dims);
        spec.shape.resize(dims);
        if (!st && tensor && dims) st = api->GetDimensions(tensor, spec.shape.data(), dims);
        api->ReleaseTypeInfo(info);
        lib_->check(st, EDGEPRUNE_BACKEND, where);
        for (auto& d : spec.shape)
          if (d < 0) d = 1;  // a dynamic batch axis runs one frame
        spec.type = static_cast<int>(type);
        (io == 0 ? inputs_ : outputs_).push_back(spec);
      }
    }
  } catch (...) {
    if (memory_) api->ReleaseMemoryInfo(memory_);
    api->ReleaseSession(session_);
    throw;
  }
}

OrtModel::~OrtModel() {
  lib_->api()->ReleaseMemoryInfo(memory_);
  lib_->api()->ReleaseSession(session_);
}

static size_t element_size(int type) {
  switch (type) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return 4;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: return 8;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return 2;
    default: return 1;
  }
}

void OrtModel::run(const std::vector<Binding>& in, const std::vector<Binding>& out) const {
  const OrtApi* api = lib_->api();
  std::vector<OrtValue*> values;
  struct Release {
    const OrtApi* api;
    std::vector<OrtValue*>& v;
    ~Release() {
      for (OrtValue* x : v) api->ReleaseValue(x);
    }
  } release{api, values};
  std::vector<const char*> names;
  auto bind = [&](const Binding& b, const std::vector<TensorSpec>& specs) {
    const TensorSpec* spec = nullptr;
    for (const auto& s : specs)
      if (s.name == b.name) spec = &s;
    if (!spec) fail(EDGEPRUNE_CORRUPT, path_ + ": the model has no tensor named '" + std::string(b.name) + "'");
    size_t count = 1;
    for (int64_t d : spec->shape) count *= static_cast<size_t>(d);
    if (count * element_size(spec->type) != b.bytes)
      fail(EDGEPRUNE_CORRUPT, path_ + ": tensor '" + spec->name + "' has another size than its manifest says");
    OrtValue* v = nullptr;
    lib_->check(api->CreateTensorWithDataAsOrtValue(memory_, b.data, b.bytes, spec->shape.data(), spec->shape.size(),
                                                    static_cast<ONNXTensorElementDataType>(spec->type), &v),
                EDGEPRUNE_BACKEND, path_ + ": ");
    values.push_back(v);
    names.push_back(b.name);
  };
  for (const auto& b : in) bind(b, inputs_);
  for (const auto& b : out) bind(b, outputs_);
  lib_->check(api->Run(session_, nullptr, names.data(), values.data(), in.size(), names.data() + in.size(), out.size(),
                       values.data() + in.size()),
              EDGEPRUNE_BACKEND, path_ + ": ONNX Runtime run failed: ");
}

}  // namespace edgeprune
