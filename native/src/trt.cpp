// The TensorRT backend: built engines of `edgeprune build SET --backend trt` (model.engine next to its
// engine.json), run with the TensorRT 10/11 C++ API. Compiled only where CMake finds NvInfer.h
// (TensorRT >= 10) and the CUDA runtime; every other build compiles trt_stub.cpp instead.
//
// One IRuntime and one ICudaEngine per member; one IExecutionContext per calling thread (TensorRT
// runs several contexts of one engine concurrently, never one context from two threads), each with
// its own non-blocking CUDA stream, device buffers for every I/O tensor (bound once with
// setTensorAddress) and pinned host staging for the pixels and the logits. A frame is
// cudaMemcpyAsync in, enqueueV3, cudaMemcpyAsync out, cudaStreamSynchronize. fp16 I/O is converted
// on the host. Every TensorRT or CUDA failure is an Error with one line; nothing is thrown out of
// TensorRT's callbacks, and the C entry points turn Errors into statuses.
#include "trt.hpp"

#include <NvInfer.h>
#include <cuda_runtime_api.h>

#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

#include "common.hpp"
#include "manifest.hpp"
#include "runtime.hpp"

#if !defined(NV_TENSORRT_MAJOR) || NV_TENSORRT_MAJOR < 10
#error "src/trt.cpp needs TensorRT 10 or newer (CMakeLists.txt compiles trt_stub.cpp for older ones)"
#endif

namespace edgeprune {

namespace {

std::string first_line(const std::string& text) {
  std::string s = text.substr(0, text.find('\n'));
  while (!s.empty() && (s.back() == '\r' || s.back() == ' ')) s.pop_back();
  return s;
}

// TensorRT reports why a call failed only to the logger (the call returns null or false). The
// logger is one for the process and never destroyed: TensorRT treats the first one as process-wide
// and may call it until the process ends. log() must not throw and must be thread-safe.
class Logger : public nvinfer1::ILogger {
 public:
  void log(Severity severity, nvinfer1::AsciiChar const* msg) noexcept override {
    if (severity != Severity::kINTERNAL_ERROR && severity != Severity::kERROR) return;
    try {
      std::lock_guard<std::mutex> lock(mu_);
      last_ = first_line(msg ? msg : "");
      ++errors_;
    } catch (...) {
    }
  }
  uint64_t errors() {
    std::lock_guard<std::mutex> lock(mu_);
    return errors_;
  }
  // The last error logged after `since` (a value of errors()), or a fixed text.
  std::string error_since(uint64_t since) {
    std::lock_guard<std::mutex> lock(mu_);
    return errors_ > since && !last_.empty() ? last_ : std::string("TensorRT logged no error");
  }

 private:
  std::mutex mu_;
  std::string last_;
  uint64_t errors_ = 0;
};

Logger& logger() {
  static Logger* instance = new Logger;  // never destroyed (see above)
  return *instance;
}

void cuda_check(cudaError_t err, const std::string& where, const char* what) {
  if (err == cudaSuccess) return;
  cudaGetLastError();  // clear a non-sticky error so the next call starts clean
  fail(EDGEPRUNE_BACKEND, where + ": CUDA " + what + " failed: " + cudaGetErrorString(err));
}

size_t element_size(nvinfer1::DataType t) {
  switch (t) {
    case nvinfer1::DataType::kFLOAT: case nvinfer1::DataType::kINT32: return 4;
    case nvinfer1::DataType::kHALF: case nvinfer1::DataType::kBF16: return 2;
    case nvinfer1::DataType::kINT64: return 8;
    case nvinfer1::DataType::kINT8: case nvinfer1::DataType::kUINT8: case nvinfer1::DataType::kBOOL:
    case nvinfer1::DataType::kFP8: return 1;
    default: return 4;  // sub-byte and newer types: an upper bound (the buffer is only bound, never read)
  }
}

std::string type_name(nvinfer1::DataType t) {
  switch (t) {
    case nvinfer1::DataType::kFLOAT: return "float32";
    case nvinfer1::DataType::kHALF: return "float16";
    case nvinfer1::DataType::kBF16: return "bfloat16";
    case nvinfer1::DataType::kINT32: return "int32";
    case nvinfer1::DataType::kINT64: return "int64";
    case nvinfer1::DataType::kINT8: return "int8";
    case nvinfer1::DataType::kUINT8: return "uint8";
    case nvinfer1::DataType::kBOOL: return "bool";
    default: return "type " + std::to_string(static_cast<int>(t));
  }
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string folder_of(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? std::string(".") : path.substr(0, slash);
}

std::vector<char> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) fail(EDGEPRUNE_NOT_FOUND, path + ": cannot open the TensorRT engine");
  const std::streamoff size = in.tellg();
  if (size <= 0) fail(EDGEPRUNE_CORRUPT, path + ": the TensorRT engine file is empty");
  std::vector<char> data(static_cast<size_t>(size));
  in.seekg(0);
  if (!in.read(data.data(), size)) fail(EDGEPRUNE_CORRUPT, path + ": cannot read the TensorRT engine");
  return data;
}

struct Tensor {
  std::string name;
  bool input = false;
  std::vector<int64_t> shape;
  nvinfer1::DataType type = nvinfer1::DataType::kFLOAT;
  size_t count = 1, bytes = 0;
};

// What one thread runs with. Built and released with the engine's device current.
struct ThreadContext {
  nvinfer1::IExecutionContext* context = nullptr;
  cudaStream_t stream = nullptr;
  std::vector<void*> device;  // one buffer per I/O tensor, in the engine's order
  void* host_in = nullptr;    // pinned staging for pixel_values and logits
  void* host_out = nullptr;

  ~ThreadContext() {
    // TensorRT first (it may still reference the buffers), then CUDA; errors are not reported here.
    if (stream) cudaStreamSynchronize(stream);
    delete context;
    for (void* p : device)
      if (p) cudaFree(p);
    if (host_in) cudaFreeHost(host_in);
    if (host_out) cudaFreeHost(host_out);
    if (stream) cudaStreamDestroy(stream);
    cudaGetLastError();
  }
};

class TrtEngine : public Engine {
 public:
  TrtEngine(const std::string& path, int width, int height) : path_(path) {
    const std::string folder = folder_of(path);
    const Json manifest = read_folder_json(folder, "engine.json", "engine");
    const std::string built_for = path + ": a TensorRT engine";

    // The GPU first: without one nothing below can work, and its compute capability is checked.
    int devices = 0;
    cudaError_t err = cudaGetDeviceCount(&devices);
    if (err != cudaSuccess || devices == 0) {
      cudaGetLastError();
      fail(EDGEPRUNE_UNSUPPORTED, built_for + " needs an NVIDIA GPU, and CUDA finds none here (" +
                                      (err != cudaSuccess ? std::string(cudaGetErrorString(err)) : std::string("0 devices")) + ")");
    }
    cuda_check(cudaGetDevice(&device_), path, "cudaGetDevice");
    cudaDeviceProp prop;
    cuda_check(cudaGetDeviceProperties(&prop, device_), path, "cudaGetDeviceProperties");
    const int32_t running = getInferLibVersion();
    const std::string stale = trt_stale_reason(manifest, running, prop.major, prop.minor, prop.name);
    if (!stale.empty()) fail(EDGEPRUNE_UNSUPPORTED, folder + ": " + stale);
    trt_ = trt_version_text(running);

    const std::vector<char> plan = read_bytes(path);
    const uint64_t mark = logger().errors();
    runtime_ = nvinfer1::createInferRuntime(logger());
    if (!runtime_) fail(EDGEPRUNE_BACKEND, path + ": TensorRT " + trt_ + " could not create a runtime: " + logger().error_since(mark));
    try {
      // Version-compatible plans embed TensorRT's lean runtime, host code TensorRT runs only when told
      // to (the Python runner does the same).
      const Json* settings = json_find(manifest, "settings");
      const Json* vc = settings ? json_find(*settings, "version_compatible") : nullptr;
      if (vc && vc->is_boolean() && vc->get<bool>()) runtime_->setEngineHostCodeAllowed(true);
      engine_ = runtime_->deserializeCudaEngine(plan.data(), plan.size());
      if (!engine_)
        fail(EDGEPRUNE_CORRUPT, path + ": TensorRT " + trt_ + " cannot deserialize this TensorRT engine (" + logger().error_since(mark) +
                                    "); rebuild it with `edgeprune build SET --backend trt` on this machine");
      describe(width, height);
    } catch (...) {
      delete engine_;
      delete runtime_;
      throw;
    }
  }

  ~TrtEngine() override {
    cudaSetDevice(device_);
    contexts_.clear();  // contexts before their engine, the engine before its runtime
    delete engine_;
    delete runtime_;
  }

  void run(const float* pixels, size_t pixel_count, float* logits, size_t logit_count) const override {
    const Tensor& in = tensors_[input_];
    const Tensor& out = tensors_[logits_];
    if (pixel_count != in.count || logit_count != out.count)
      fail(EDGEPRUNE_INTERNAL, path_ + ": run with " + std::to_string(pixel_count) + " pixels and " + std::to_string(logit_count) +
                                   " logits, the engine has " + std::to_string(in.count) + " and " + std::to_string(out.count));
    cuda_check(cudaSetDevice(device_), path_, "cudaSetDevice");
    ThreadContext& c = context();
    if (in.type == nvinfer1::DataType::kHALF) {
      uint16_t* h = static_cast<uint16_t*>(c.host_in);
      for (size_t i = 0; i < in.count; ++i) h[i] = float_to_half(pixels[i]);
    } else {
      std::memcpy(c.host_in, pixels, in.bytes);
    }
    cuda_check(cudaMemcpyAsync(c.device[input_], c.host_in, in.bytes, cudaMemcpyHostToDevice, c.stream), path_,
               "cudaMemcpyAsync (pixels to the GPU)");
    const uint64_t mark = logger().errors();
    if (!c.context->enqueueV3(c.stream)) {
      cudaStreamSynchronize(c.stream);  // the copy above may still read the staging buffer
      cudaGetLastError();
      fail(EDGEPRUNE_BACKEND, path_ + ": TensorRT could not run the engine (enqueueV3): " + logger().error_since(mark));
    }
    cuda_check(cudaMemcpyAsync(c.host_out, c.device[logits_], out.bytes, cudaMemcpyDeviceToHost, c.stream), path_,
               "cudaMemcpyAsync (logits from the GPU)");
    cuda_check(cudaStreamSynchronize(c.stream), path_, "cudaStreamSynchronize (running the engine)");
    if (out.type == nvinfer1::DataType::kHALF) {
      const uint16_t* h = static_cast<const uint16_t*>(c.host_out);
      for (size_t i = 0; i < out.count; ++i) logits[i] = half_to_float(h[i]);
    } else {
      std::memcpy(logits, c.host_out, out.bytes);
    }
  }

  const std::string& provider() const override { return provider_; }
  int classes() const override { return classes_; }

 private:
  // The engine's I/O tensors, checked against what an engine set member is: pixel_values
  // [1, 3, h, w] in, logits [1, classes, h, w] out, static shapes, float32 or float16.
  void describe(int width, int height) {
    const int n = engine_->getNbIOTensors();
    for (int i = 0; i < n; ++i) {
      const char* name = engine_->getIOTensorName(i);
      if (!name) fail(EDGEPRUNE_BACKEND, path_ + ": TensorRT returned no name for I/O tensor " + std::to_string(i));
      Tensor t;
      t.name = name;
      const nvinfer1::TensorIOMode mode = engine_->getTensorIOMode(name);
      if (mode != nvinfer1::TensorIOMode::kINPUT && mode != nvinfer1::TensorIOMode::kOUTPUT) continue;
      t.input = mode == nvinfer1::TensorIOMode::kINPUT;
      const nvinfer1::Dims dims = engine_->getTensorShape(name);
      if (dims.nbDims < 0) fail(EDGEPRUNE_CORRUPT, path_ + ": TensorRT reports no shape for tensor '" + t.name + "'");
      for (int d = 0; d < dims.nbDims; ++d) t.shape.push_back(static_cast<int64_t>(dims.d[d]));
      for (int64_t d : t.shape) {
        if (d < 0)
          fail(EDGEPRUNE_UNSUPPORTED, path_ + ": tensor '" + t.name + "' has a dynamic shape " + shape_text(t.shape) +
                                          "; libedgeprune runs static-shape engines only (as `edgeprune build` writes them)");
        t.count *= static_cast<size_t>(d);
      }
      t.type = engine_->getTensorDataType(name);
      t.bytes = t.count * element_size(t.type);
      if (t.input && t.name != "pixel_values")
        fail(EDGEPRUNE_CORRUPT, path_ + ": unexpected engine input '" + t.name + "' (not an engine set member)");
      if (t.input) input_ = tensors_.size();
      if (!t.input && t.name == "logits") logits_ = tensors_.size();
      tensors_.push_back(t);
    }
    if (input_ == kNone) fail(EDGEPRUNE_CORRUPT, path_ + ": the engine has no input 'pixel_values' (not an engine set member)");
    if (logits_ == kNone || tensors_[logits_].shape.size() != 4 || tensors_[logits_].shape[0] != 1)
      fail(EDGEPRUNE_UNSUPPORTED, path_ + ": the engine has no dense 'logits' output [1, classes, h, w]");
    for (size_t i : {input_, logits_}) {
      const Tensor& t = tensors_[i];
      if (t.type != nvinfer1::DataType::kFLOAT && t.type != nvinfer1::DataType::kHALF)
        fail(EDGEPRUNE_UNSUPPORTED, path_ + ": tensor '" + t.name + "' is " + type_name(t.type) + "; libedgeprune feeds and reads float32 or float16");
    }
    const std::vector<int64_t> pixels = {1, 3, height, width};
    const std::vector<int64_t>& l = tensors_[logits_].shape;
    if (tensors_[input_].shape != pixels || l[2] != height || l[3] != width)
      fail(EDGEPRUNE_CORRUPT, path_ + ": the engine takes pixel_values " + shape_text(tensors_[input_].shape) + " and gives logits " +
                                  shape_text(l) + ", the engine set says " + shape_text(pixels) + " in (built from another member?)");
    if (l[1] < 1 || l[1] > 1 << 20) fail(EDGEPRUNE_CORRUPT, path_ + ": logits " + shape_text(l) + " has no usable class axis");
    classes_ = static_cast<int>(l[1]);
  }

  // The calling thread's context, created on its first frame.
  ThreadContext& context() const {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = contexts_.find(std::this_thread::get_id());
    if (it != contexts_.end()) return *it->second;
    std::unique_ptr<ThreadContext> c(new ThreadContext);
    const uint64_t mark = logger().errors();
    c->context = engine_->createExecutionContext();
    if (!c->context)
      fail(EDGEPRUNE_BACKEND, path_ + ": TensorRT could not create an execution context (out of GPU memory?): " + logger().error_since(mark));
    cuda_check(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking), path_, "cudaStreamCreateWithFlags");
    c->device.assign(tensors_.size(), nullptr);
    for (size_t i = 0; i < tensors_.size(); ++i) {
      const Tensor& t = tensors_[i];
      cuda_check(cudaMalloc(&c->device[i], t.bytes ? t.bytes : 1), path_, "cudaMalloc");
      if (t.input) {
        nvinfer1::Dims dims{};
        dims.nbDims = static_cast<int32_t>(t.shape.size());
        for (size_t d = 0; d < t.shape.size(); ++d) dims.d[d] = t.shape[d];
        if (!c->context->setInputShape(t.name.c_str(), dims))
          fail(EDGEPRUNE_BACKEND, path_ + ": TensorRT refused input shape " + shape_text(t.shape) + ": " + logger().error_since(mark));
      }
      if (!c->context->setTensorAddress(t.name.c_str(), c->device[i]))
        fail(EDGEPRUNE_BACKEND, path_ + ": TensorRT refused the buffer of tensor '" + t.name + "': " + logger().error_since(mark));
    }
    cuda_check(cudaMallocHost(&c->host_in, tensors_[input_].bytes), path_, "cudaMallocHost");
    cuda_check(cudaMallocHost(&c->host_out, tensors_[logits_].bytes), path_, "cudaMallocHost");
    ThreadContext& ref = *c;
    contexts_.emplace(std::this_thread::get_id(), std::move(c));
    return ref;
  }

  static constexpr size_t kNone = static_cast<size_t>(-1);
  std::string path_, trt_;
  const std::string provider_ = "tensorrt";
  int device_ = 0;
  int classes_ = 0;
  nvinfer1::IRuntime* runtime_ = nullptr;
  nvinfer1::ICudaEngine* engine_ = nullptr;
  std::vector<Tensor> tensors_;
  size_t input_ = kNone, logits_ = kNone;
  // One context per thread that ever ran a frame, kept until close (a thread id reused by a new
  // thread reuses its idle context). The map's nodes never move, so a context is used unlocked.
  mutable std::mutex mu_;
  mutable std::map<std::thread::id, std::unique_ptr<ThreadContext>> contexts_;
};

}  // namespace

std::unique_ptr<Engine> make_trt_engine(const std::string& path, int width, int height) {
  return std::unique_ptr<Engine>(new TrtEngine(path, width, height));
}

}  // namespace edgeprune
