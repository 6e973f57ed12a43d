// The OpenVINO backend's engine (see openvino.hpp): one ov_compiled_model_t per member, imported from
// its blob through OpenVINO's C API (openvino_api.hpp). Every OpenVINO object is owned by a unique_ptr
// whose deleter is its ov_*_free function; every failed call is an Error line (api.cpp turns Errors
// into statuses).
//
// Infer requests are pooled: a request runs one inference at a time, so each concurrent
// edgeprune_infer takes an idle one (or creates it) and gives it back, and a runtime holds as many as
// threads ever ran it at once.
#include <cstring>
#include <fstream>
#include <mutex>

#include "manifest.hpp"
#include "openvino.hpp"
#include "runtime.hpp"
#include "openvino_api.hpp"  // last (see there)

namespace edgeprune {

namespace {

std::string folder_of(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? std::string(".") : path.substr(0, slash);
}

std::vector<char> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) fail(EDGEPRUNE_NOT_FOUND, path + ": cannot open it");
  const std::streamoff size = in.tellg();
  std::vector<char> data(static_cast<size_t>(size > 0 ? size : 0));
  in.seekg(0);
  if (size > 0 && !in.read(data.data(), size)) fail(EDGEPRUNE_CORRUPT, path + ": cannot read it");
  return data;
}

// edgeprune precision -> INFERENCE_PRECISION_HINT, as edgeprune.backends.openvino.PRECISION_HINTS after
// edgeprune.engines.built.openvino_hint: an int8 engine is a QDQ graph whose quantized ops run int8
// whatever the hint, imported with f32 for the rest (the token decisions among it).
const char* precision_hint(const std::string& precision) {
  if (precision == "fp32" || precision == "int8") return "f32";
  if (precision == "bf16") return "bf16";
  if (precision == "fp16") return "f16";
  return nullptr;
}

std::string dims_text(const std::vector<int64_t>& dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + (dims[i] < 0 ? std::string("?") : std::to_string(dims[i]));
  return s + "]";
}

class OvEngine : public Engine {
 public:
  OvEngine(std::shared_ptr<OvContext> context, const std::string& path, int width, int height, int threads)
      : ctx_(std::move(context)), lib_(*ctx_->lib), path_(path), width_(width), height_(height),
        compiled_(nullptr, lib_.api.ov_compiled_model_free) {
    const std::string folder = folder_of(path), build = folder_of(folder);
    const Json manifest = read_folder_json(folder, "engine.json", "engine");
    Json index;  // the set build's engines.json (already read by load_set), for the rebuild command
    const bool in_set = is_file(build + "/engines.json");
    if (in_set) index = read_folder_json(build, "engines.json", "engine build");
    const std::string rebuild = openvino_rebuild_command(manifest, in_set ? &index : nullptr, in_set ? build : folder);
    const std::string stale = openvino_stale_reason(manifest, lib_.version, ctx_->devices, rebuild);
    if (!stale.empty()) fail(EDGEPRUNE_UNSUPPORTED, folder + ": stale engine (" + stale + ")");
    device_ = openvino_engine_device(manifest);
    const Json* settings = json_find(manifest, "settings");
    const Json* p = settings ? json_find(*settings, "precision") : nullptr;
    if (!p || !p->is_string()) p = json_find(manifest, "precision");
    const std::string precision = p && p->is_string() ? p->get<std::string>() : "fp32";
    const char* hint = precision_hint(precision);
    if (!hint) fail(EDGEPRUNE_UNSUPPORTED, folder + ": OpenVINO engine of precision '" + precision + "'; libedgeprune runs fp32, bf16, fp16 and int8");

    // The configuration the Python runner imports with (edgeprune.backends.openvino.compile_config):
    // import_model has no properties argument in the C API, so they are set on this runtime's core,
    // one pair per call (the variadic setter reads one pair in some releases).
    const std::string threads_text = std::to_string(threads);
    const char* config[][2] = {{"INFERENCE_PRECISION_HINT", hint}, {"PERFORMANCE_HINT", "LATENCY"},
                               {"INFERENCE_NUM_THREADS", threads_text.c_str()}};
    for (const auto& kv : config)
      lib_.check(lib_.api.ov_core_set_property(ctx_->core.get(), device_.c_str(), kv[0], kv[1]), EDGEPRUNE_BACKEND,
                 path + ": OpenVINO refused " + kv[0] + "=" + kv[1] + " for " + device_ + ": ");

    blob_ = read_bytes(path);
    if (blob_.empty()) fail(EDGEPRUNE_CORRUPT, path + ": the blob is empty; rebuild it with `edgeprune build SET --backend openvino`");
    ov_compiled_model_t* raw = nullptr;
    lib_.check(lib_.api.ov_core_import_model(ctx_->core.get(), blob_.data(), blob_.size(), device_.c_str(), &raw), EDGEPRUNE_CORRUPT,
               path + ": OpenVINO " + lib_.version + " cannot import this blob on " + device_ + ": ");
    compiled_.reset(raw);
    describe();
    // What runs it, as edgeprune.backends.runners.runner_label says: "OpenVINO CPU f32", with the
    // precision the device really runs (a CPU without bf16 units runs f32 whatever the hint).
    char* runs = nullptr;
    std::string precision_run = hint;
    if (lib_.api.ov_compiled_model_get_property(compiled_.get(), "INFERENCE_PRECISION_HINT", &runs) == ov_status_e::OK && runs) {
      precision_run = runs;
      lib_.api.ov_free(runs);
    }
    provider_ = "OpenVINO " + device_ + " " + precision_run;
  }

  void run(const float* pixels, size_t pixel_count, float* logits, size_t logit_count) const override {
    const size_t want_pixels = static_cast<size_t>(3) * static_cast<size_t>(width_) * static_cast<size_t>(height_);
    if (pixel_count != want_pixels) fail(EDGEPRUNE_INTERNAL, path_ + ": " + std::to_string(pixel_count) + " pixels given for " + std::to_string(want_pixels));
    Lease lease(*this);
    int64_t dims[4] = {1, 3, height_, width_};
    const ov_shape_t shape{4, dims};  // read (copied) by OpenVINO, never freed: no ov_shape_create needed
    ov_tensor_t* raw_in = nullptr;
    // The caller's pixels, wrapped without a copy; the request reads them during this call only.
    lib_.check(lib_.api.ov_tensor_create_from_host_ptr(F32, shape, const_cast<float*>(pixels), &raw_in), EDGEPRUNE_BACKEND,
               path_ + ": OpenVINO input tensor: ");
    Tensor in(raw_in, lib_.api.ov_tensor_free);
    lib_.check(lib_.api.ov_infer_request_set_input_tensor_by_index(lease.request, 0, in.get()), EDGEPRUNE_BACKEND,
               path_ + ": OpenVINO refused the input: ");
    lib_.check(lib_.api.ov_infer_request_infer(lease.request), EDGEPRUNE_BACKEND, path_ + ": OpenVINO inference failed: ");
    ov_tensor_t* raw_out = nullptr;
    lib_.check(lib_.api.ov_infer_request_get_output_tensor_by_index(lease.request, logits_index_, &raw_out), EDGEPRUNE_BACKEND,
               path_ + ": OpenVINO output tensor: ");
    Tensor out(raw_out, lib_.api.ov_tensor_free);
    ov_element_type_e type = DYNAMIC;
    size_t bytes = 0;
    void* data = nullptr;
    lib_.check(lib_.api.ov_tensor_get_element_type(out.get(), &type), EDGEPRUNE_BACKEND, path_ + ": ");
    lib_.check(lib_.api.ov_tensor_get_byte_size(out.get(), &bytes), EDGEPRUNE_BACKEND, path_ + ": ");
    if (type != F32 || bytes != logit_count * sizeof(float))
      fail(EDGEPRUNE_CORRUPT, path_ + ": the engine gave " + std::to_string(bytes) + " bytes of logits (element type " +
                                  std::to_string(static_cast<int>(type)) + "), the engine set expects " +
                                  std::to_string(logit_count) + " float32 values");
    lib_.check(lib_.api.ov_tensor_data(out.get(), &data), EDGEPRUNE_BACKEND, path_ + ": ");
    // Copied out before the request goes back to the pool: the next inference reuses its buffer.
    std::memcpy(logits, data, bytes);
  }
  const std::string& provider() const override { return provider_; }
  int classes() const override { return classes_; }

 private:
  using Tensor = std::unique_ptr<ov_tensor_t, decltype(OvApi::ov_tensor_free)>;
  using Request = std::unique_ptr<ov_infer_request_t, decltype(OvApi::ov_infer_request_free)>;
  using Port = std::unique_ptr<ov_output_const_port_t, decltype(OvApi::ov_output_const_port_free)>;

  // An infer request taken from the pool for one inference, given back (even after a failure) when
  // it goes out of scope.
  struct Lease {
    explicit Lease(const OvEngine& e) : engine(e) {
      std::lock_guard<std::mutex> lock(e.mu_);
      if (!e.idle_.empty()) {
        request = e.idle_.back().release();
        e.idle_.pop_back();
        return;
      }
      e.lib_.check(e.lib_.api.ov_compiled_model_create_infer_request(e.compiled_.get(), &request), EDGEPRUNE_BACKEND,
                   e.path_ + ": OpenVINO cannot create an infer request: ");
    }
    ~Lease() {
      Request owned(request, engine.lib_.api.ov_infer_request_free);
      std::lock_guard<std::mutex> lock(engine.mu_);
      try {
        engine.idle_.push_back(std::move(owned));
      } catch (...) {  // out of memory: the request is freed instead of pooled
      }
    }
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    const OvEngine& engine;
    ov_infer_request_t* request = nullptr;
  };

  struct PortInfo {
    std::string name;
    ov_element_type_e type = DYNAMIC;
    std::vector<int64_t> dims;  // -1: dynamic
  };

  PortInfo port_info(bool input, size_t index) const {
    const std::string where = path_ + ": OpenVINO " + (input ? "input " : "output ") + std::to_string(index) + ": ";
    ov_output_const_port_t* raw = nullptr;
    lib_.check(input ? lib_.api.ov_compiled_model_input_by_index(compiled_.get(), index, &raw)
                     : lib_.api.ov_compiled_model_output_by_index(compiled_.get(), index, &raw),
               EDGEPRUNE_BACKEND, where);
    Port port(raw, lib_.api.ov_output_const_port_free);
    PortInfo info;
    char* name = nullptr;
    lib_.check(lib_.api.ov_port_get_any_name(port.get(), &name), EDGEPRUNE_BACKEND, where);
    std::unique_ptr<const char, decltype(OvApi::ov_free)> owned_name(name, lib_.api.ov_free);
    info.name = name ? name : "";
    lib_.check(lib_.api.ov_port_get_element_type(port.get(), &info.type), EDGEPRUNE_BACKEND, where);
    ov_partial_shape_t shape{};
    lib_.check(lib_.api.ov_port_get_partial_shape(port.get(), &shape), EDGEPRUNE_BACKEND, where);
    const bool static_rank = shape.rank.min == shape.rank.max && shape.rank.min >= 0 && shape.rank.min <= 16;
    for (int64_t i = 0; static_rank && i < shape.rank.max; ++i)
      info.dims.push_back(shape.dims[i].min == shape.dims[i].max ? shape.dims[i].min : -1);
    lib_.api.ov_partial_shape_free(&shape);
    return info;
  }

  // Checks the compiled model against the engine set: one float32 input pixel_values [1, 3, h, w]
  // (a dynamic batch runs one frame) and a float32 output logits [1, classes, h, w].
  void describe() {
    size_t inputs = 0, outputs = 0;
    lib_.check(lib_.api.ov_compiled_model_inputs_size(compiled_.get(), &inputs), EDGEPRUNE_BACKEND, path_ + ": ");
    lib_.check(lib_.api.ov_compiled_model_outputs_size(compiled_.get(), &outputs), EDGEPRUNE_BACKEND, path_ + ": ");
    if (inputs != 1) fail(EDGEPRUNE_CORRUPT, path_ + ": the compiled model has " + std::to_string(inputs) + " inputs (not an engine set member)");
    const PortInfo in = port_info(true, 0);
    if (in.name != "pixel_values") fail(EDGEPRUNE_CORRUPT, path_ + ": unexpected model input '" + in.name + "' (not an engine set member)");
    PortInfo logits;
    bool found = false;
    for (size_t i = 0; i < outputs && !found; ++i) {
      logits = port_info(false, i);
      if (logits.name == "logits") logits_index_ = i, found = true;
    }
    if (!found || logits.dims.size() != 4 || logits.dims[1] < 1 || logits.dims[1] > 1 << 20)
      fail(EDGEPRUNE_UNSUPPORTED, path_ + ": the model has no dense 'logits' output [1, classes, h, w]");
    if (in.type != F32 || logits.type != F32)
      fail(EDGEPRUNE_UNSUPPORTED, path_ + ": pixel_values and logits must be float32 (libedgeprune feeds and reads float32)");
    auto fits = [](int64_t dim, int64_t want) { return dim < 0 || dim == want; };
    if (in.dims.size() != 4 || !fits(in.dims[0], 1) || in.dims[1] != 3 || !fits(in.dims[2], height_) || !fits(in.dims[3], width_) ||
        !fits(logits.dims[0], 1) || !fits(logits.dims[2], height_) || !fits(logits.dims[3], width_))
      fail(EDGEPRUNE_CORRUPT, path_ + ": the engine takes pixel_values " + dims_text(in.dims) + " and gives logits " + dims_text(logits.dims) +
                                  ", the engine set says [1, 3, " + std::to_string(height_) + ", " + std::to_string(width_) +
                                  "] in (built from another member?)");
    classes_ = static_cast<int>(logits.dims[1]);
  }

  std::shared_ptr<OvContext> ctx_;  // the core (and library) outlive the compiled model below
  const OvLibrary& lib_;
  std::string path_, device_;
  std::string provider_;
  int64_t width_, height_;
  int classes_ = 0;
  size_t logits_index_ = 0;
  // The blob, kept for the compiled model's life: OpenVINO's CPU plugin imports it without copying
  // its weights and reads them from this buffer at every inference (freeing it after the import was
  // a heap-use-after-free that ASan caught, and garbage logits without it).
  std::vector<char> blob_;
  std::unique_ptr<ov_compiled_model_t, decltype(OvApi::ov_compiled_model_free)> compiled_;
  mutable std::mutex mu_;
  mutable std::vector<Request> idle_;  // declared last: freed first, before the compiled model
};

}  // namespace

std::unique_ptr<Engine> make_openvino_engine(std::shared_ptr<OvContext> context, const std::string& path, int width, int height,
                                             int threads) {
  return std::unique_ptr<Engine>(new OvEngine(std::move(context), path, width, height, threads));
}

}  // namespace edgeprune
