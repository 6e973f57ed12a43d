#include "runtime.hpp"

#include <cmath>
#include <cstring>

#include "common.hpp"

namespace edgeprune {

// --- ONNX Runtime engine ---------------------------------------------------------------------------
namespace {
class OrtEngine : public Engine {
 public:
  OrtEngine(std::shared_ptr<OrtLibrary> lib, const std::string& path, const std::string& provider, int threads)
      : model_(std::move(lib), path, provider, threads) {
    for (const auto& in : model_.inputs())
      if (in.name != "pixel_values") fail(EDGEPRUNE_CORRUPT, path + ": unexpected model input '" + in.name + "' (not an engine set member)");
    for (const auto& out : model_.outputs())
      if (out.name == "logits") logits_ = &out;
    if (model_.inputs().size() != 1 || !logits_ || logits_->shape.size() != 4)
      fail(EDGEPRUNE_UNSUPPORTED, path + ": the model has no dense 'logits' output [1, classes, h, w]");
  }
  void run(const float* pixels, size_t pixel_count, float* logits, size_t logit_count) const override {
    model_.run({{"pixel_values", const_cast<float*>(pixels), pixel_count * sizeof(float)}},
               {{"logits", logits, logit_count * sizeof(float)}});
  }
  const std::string& provider() const override { return model_.provider(); }
  int classes() const override { return static_cast<int>(logits_->shape[1]); }

 private:
  OrtModel model_;
  const TensorSpec* logits_ = nullptr;
};
}  // namespace

std::unique_ptr<Engine> make_ort_engine(std::shared_ptr<OrtLibrary> lib, const std::string& path,
                                        const std::string& provider, int threads) {
  return std::unique_ptr<Engine>(new OrtEngine(std::move(lib), path, provider, threads));
}

// --- shared pre/post ---------------------------------------------------------------------------------
void Runtime::preprocess(const ImageView& frame, std::vector<uint8_t>& resized, std::vector<float>& pixels) const {
  const int w = input_.width, h = input_.height;
  resized.resize(static_cast<size_t>(w) * static_cast<size_t>(h) * 3);
  resize_rgb(frame, resized.data(), w, h);
  pixels.resize(resized.size());
  norm_.apply(resized.data(), w, h, pixels.data());
}

void Runtime::postprocess(const Call& call, const float* logits, edgeprune_result* result) const {
  if (call.labels == EDGEPRUNE_LABELS_MODEL) {
    argmax_labels(logits, classes_, input_.height, input_.width, call.labels_out);
    result->labels_width = input_.width, result->labels_height = input_.height;
  } else if (call.labels == EDGEPRUNE_LABELS_INPUT) {
    upsample_argmax(logits, classes_, input_.height, input_.width, call.labels_out, call.frame.height, call.frame.width);
    result->labels_width = call.frame.width, result->labels_height = call.frame.height;
  }
}

static void need(bool ok, edgeprune_code code, const std::string& message) {
  if (!ok) fail(code, message);
}

void Runtime::infer(const edgeprune_frame* frame, const edgeprune_request* request, edgeprune_result* result) {
  const double start = now_ms();
  need(frame != nullptr, EDGEPRUNE_INVALID_ARGUMENT, "infer: frame is NULL");
  need(result != nullptr, EDGEPRUNE_INVALID_ARGUMENT, "infer: result is NULL");
  need(frame->struct_size >= sizeof(edgeprune_frame), EDGEPRUNE_INVALID_ARGUMENT, "infer: frame->struct_size is wrong; call edgeprune_frame_init");
  need(result->struct_size >= sizeof(edgeprune_result), EDGEPRUNE_INVALID_ARGUMENT, "infer: result->struct_size is wrong; call edgeprune_result_init");
  need(!request || request->struct_size >= sizeof(edgeprune_request), EDGEPRUNE_INVALID_ARGUMENT,
       "infer: request->struct_size is wrong; call edgeprune_request_init");
  need(frame->rgb != nullptr, EDGEPRUNE_INVALID_ARGUMENT, "infer: frame->rgb is NULL");
  need(frame->width >= 1 && frame->height >= 1 && frame->width <= 65536 && frame->height <= 65536, EDGEPRUNE_INVALID_ARGUMENT,
       "infer: frame size " + std::to_string(frame->width) + "x" + std::to_string(frame->height) + " is not in 1..65536");
  const size_t row = static_cast<size_t>(frame->width) * 3;
  const size_t stride = frame->stride ? frame->stride : row;
  need(stride >= row, EDGEPRUNE_INVALID_ARGUMENT, "infer: frame stride " + std::to_string(stride) +
                                                      " is smaller than 3 * width = " + std::to_string(row));
  Call call{ImageView{frame->rgb, frame->width, frame->height, stride}, 0, 0.0, EDGEPRUNE_LABELS_NONE, nullptr, nullptr};
  if (request) {
    call.stream = request->stream;
    need(!std::isnan(request->deadline_ms), EDGEPRUNE_INVALID_ARGUMENT, "infer: deadline_ms is NaN");
    call.deadline_ms = request->deadline_ms > 0 ? request->deadline_ms : 0.0;
    call.labels = request->labels;
    need(call.labels >= EDGEPRUNE_LABELS_NONE && call.labels <= EDGEPRUNE_LABELS_MODEL, EDGEPRUNE_INVALID_ARGUMENT,
         "infer: labels must be EDGEPRUNE_LABELS_NONE, _INPUT or _MODEL, got " + std::to_string(call.labels));
    if (call.labels != EDGEPRUNE_LABELS_NONE) {
      need(classes_ <= 256, EDGEPRUNE_UNSUPPORTED, "infer: " + std::to_string(classes_) + " classes do not fit 8-bit labels");
      need(request->labels_out != nullptr, EDGEPRUNE_INVALID_ARGUMENT, "infer: labels requested but labels_out is NULL");
      const size_t want = call.labels == EDGEPRUNE_LABELS_MODEL
                              ? static_cast<size_t>(input_.width) * static_cast<size_t>(input_.height)
                              : static_cast<size_t>(frame->width) * static_cast<size_t>(frame->height);
      need(request->labels_capacity >= want, EDGEPRUNE_BUFFER_TOO_SMALL,
           "infer: labels_out holds " + std::to_string(request->labels_capacity) + " bytes, the labels need " + std::to_string(want));
      call.labels_out = request->labels_out;
    }
    if (request->logits_out) {
      const size_t want = static_cast<size_t>(classes_) * static_cast<size_t>(input_.width) * static_cast<size_t>(input_.height);
      need(request->logits_capacity >= want, EDGEPRUNE_BUFFER_TOO_SMALL,
           "infer: logits_out holds " + std::to_string(request->logits_capacity) + " floats, the logits need " + std::to_string(want));
      call.logits_out = request->logits_out;
    }
  }
  edgeprune_result out;
  edgeprune_result_init(&out);
  run(call, &out, start);
  std::memcpy(result, &out, sizeof out);  // the caller's result changes only on success
}

// --- engine sets -------------------------------------------------------------------------------------
namespace {
class SetRuntime : public Runtime {
 public:
  SetRuntime(SetSpec spec, std::vector<std::unique_ptr<Engine>> engines, std::unique_ptr<Policy> policy, double target_ms)
      : Runtime(spec.input, engines.front()->classes()), spec_(std::move(spec)), engines_(std::move(engines)),
        policy_(std::move(policy)), target_ms_(target_ms) {
    for (const auto& e : engines_)
      if (e->classes() != classes_) fail(EDGEPRUNE_CORRUPT, spec_.root + ": members disagree on the number of classes");
  }

  void reset_stream(uint64_t stream) override {
    std::lock_guard<std::mutex> lock(mu_);
    previous_.erase(stream);
  }
  void info(edgeprune_info* info) const override {
    info->kind = EDGEPRUNE_ENGINE_SET;
    info->engines = static_cast<int>(engines_.size());
    info->width = input_.width, info->height = input_.height, info->classes = classes_;
    copy_field(info->provider, engines_.front()->provider());
    const std::string& backend = spec_.members.front().backend;
    copy_field(info->backend, backend == "trt" ? "tensorrt" : backend == "openvino" ? "openvino" : "onnxruntime");
  }
  int engines() const override { return static_cast<int>(engines_.size()); }
  std::string engine_name(int i) const override { return spec_.members[static_cast<size_t>(i)].name; }
  double engine_budget(int i) const override { return spec_.members[static_cast<size_t>(i)].budget; }

 protected:
  // Mirrors edgeprune.runtime.Runtime.infer/_run; the lock is held only to choose and to observe.
  void run(const Call& call, edgeprune_result* r, double start) override {
    // Per-thread frame buffers (model-size pixels, and logits when the caller does not take them),
    // reused from frame to frame: allocated per call they were fresh pages of a few hundred kB each
    // time (page faults, and value-initialising the logits the engine overwrites anyway).
    static thread_local std::vector<uint8_t> resized;
    static thread_local std::vector<float> pixels, own;
    preprocess(call.frame, resized, pixels);
    const double t_pre = now_ms();
    std::array<uint8_t, kThumb * kThumb> small;
    downscale_gray(call.frame.data, call.frame.width, call.frame.height, call.frame.stride, small.data());
    const double deadline = call.deadline_ms > 0 ? call.deadline_ms : target_ms_;
    Decision d;
    double content;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto prev = previous_.find(call.stream);
      content = frame_change(prev == previous_.end() ? nullptr : prev->second.data(), small.data());
      previous_[call.stream] = small;
      r->frame = frames_++;
      const double budget_ms = deadline - overhead_ms_;
      FrameContext ctx{r->frame, true, content, true, std::max(budget_ms, 1e-3)};
      d = policy_->choose(ctx);
    }
    const double t1 = now_ms();
    const size_t count = static_cast<size_t>(classes_) * static_cast<size_t>(input_.width) * static_cast<size_t>(input_.height);
    float* logits = call.logits_out;
    if (!logits) {
      if (own.size() < count) own.resize(count);
      logits = own.data();
    }
    const Engine& engine = *engines_[static_cast<size_t>(d.index)];
    engine.run(pixels.data(), pixels.size(), logits, count);
    const double t2 = now_ms();
    postprocess(call, logits, r);
    const double t3 = now_ms();
    const double engine_ms = t2 - t1;
    double total;
    {
      std::lock_guard<std::mutex> lock(mu_);
      policy_->observe(d.index, engine_ms);
      total = now_ms() - start;
      overhead_ms_ += 0.1 * (std::max(total - engine_ms, 0.0) - overhead_ms_);
    }
    const double t4 = now_ms();
    r->engine_index = d.index;
    copy_field(r->engine, spec_.members[static_cast<size_t>(d.index)].name);
    r->budget = spec_.members[static_cast<size_t>(d.index)].budget;
    copy_field(r->provider, engine.provider());
    r->predicted_ms = d.predicted_ms;
    r->content = content;
    r->pre_ms = t_pre - start;
    r->engine_ms = engine_ms;
    r->post_ms = t3 - t2;
    r->scheduler_ms = (t1 - t_pre) + (t4 - t3);
    r->total_ms = total;
    r->deadline_met = total <= deadline;
    copy_field(r->reason, d.reason);
  }

 private:
  SetSpec spec_;
  std::vector<std::unique_ptr<Engine>> engines_;
  std::unique_ptr<Policy> policy_;
  double target_ms_;
  std::mutex mu_;
  std::map<uint64_t, std::array<uint8_t, kThumb * kThumb>> previous_;
  int64_t frames_ = 0;
  // What a frame costs besides the engine: the policy plans against the deadline minus this.
  double overhead_ms_ = 0.0;
};
}  // namespace

std::unique_ptr<Runtime> make_temporal_runtime(const TemporalSpec& spec, std::shared_ptr<OrtLibrary> lib,
                                               const edgeprune_options& o);

std::unique_ptr<Runtime> Runtime::open(const std::string& path, const edgeprune_options& o) {
  const std::string provider = o.provider && *o.provider ? o.provider : "cpu";
  if (provider != "cpu" && provider != "cuda" && provider != "tensorrt" && provider != "auto")
    fail(EDGEPRUNE_INVALID_ARGUMENT, "provider must be cpu, cuda, tensorrt or auto, got '" + provider + "'");
  need(o.threads >= 0 && o.threads <= 256, EDGEPRUNE_INVALID_ARGUMENT, "threads must be in 0..256");
  const int threads = o.threads ? o.threads : 2;
  const bool verify = o.verify != 0;
  if (!is_file(path + "/set.json") && is_temporal(path)) {
    TemporalSpec spec = load_temporal(path, verify);
    return make_temporal_runtime(spec, OrtLibrary::load(o.ort_library ? o.ort_library : ""), o);
  }
  SetSpec spec = load_set(path, o.engines ? o.engines : "", verify);
  const std::string policy_name = o.policy && *o.policy ? o.policy : "deadline";
  // The policy first: a bad parameter fails before any session is created.
  std::unique_ptr<Policy> policy = make_policy(policy_name, spec.profiles, o.target_ms, o.policy_args ? o.policy_args : "");
  std::shared_ptr<OrtLibrary> lib;
  std::shared_ptr<OvContext> ov;
  std::vector<std::unique_ptr<Engine>> engines;
  for (const auto& m : spec.members) {
    if (m.backend == "trt") {
      engines.push_back(make_trt_engine(m.model_path, spec.input.width, spec.input.height));
      continue;
    }
    if (m.backend == "openvino") {
      // One OpenVINO library and core for all members (the device comes from each engine's build,
      // not from `provider`); never ONNX Runtime: a blob is no ONNX graph.
      if (!ov) ov = open_openvino(o.openvino_library ? o.openvino_library : "");
      engines.push_back(make_openvino_engine(ov, m.model_path, spec.input.width, spec.input.height, threads));
      continue;
    }
    if (!lib) lib = OrtLibrary::load(o.ort_library ? o.ort_library : "");
    std::string p = provider;
    if (m.backend == "ort-cuda") p = "cuda";
    else if (m.backend == "ort-trt") p = "tensorrt";
    engines.push_back(make_ort_engine(lib, m.model_path, p, threads));
  }
  return std::unique_ptr<Runtime>(new SetRuntime(std::move(spec), std::move(engines), std::move(policy), o.target_ms));
}

}  // namespace edgeprune
