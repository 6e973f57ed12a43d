// The runtimes behind the C handle: an engine set (one engine per budget, a policy per frame) and
// a temporal artifact (refresh/update graphs with per-stream caches).
#pragma once

#include <array>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "edgeprune/edgeprune.h"
#include "image.hpp"
#include "manifest.hpp"
#include "openvino.hpp"
#include "ort.hpp"
#include "policy.hpp"

namespace edgeprune {

// One member's engine: normalised pixels [1, 3, h, w] in, logits [1, classes, h, w] out.
class Engine {
 public:
  virtual ~Engine() = default;
  virtual void run(const float* pixels, size_t pixel_count, float* logits, size_t logit_count) const = 0;
  virtual const std::string& provider() const = 0;
  virtual int classes() const = 0;
};

std::unique_ptr<Engine> make_ort_engine(std::shared_ptr<OrtLibrary> lib, const std::string& path,
                                        const std::string& provider, int threads);
// TensorRT (`edgeprune build --backend trt`); throws UNSUPPORTED where the library was built without it.
std::unique_ptr<Engine> make_trt_engine(const std::string& path, int width, int height);

// Validated inputs of one call, shared by both runtimes.
struct Call {
  ImageView frame;
  uint64_t stream;
  double deadline_ms;
  int labels;
  uint8_t* labels_out;
  float* logits_out;
};

class Runtime {
 public:
  virtual ~Runtime() = default;
  static std::unique_ptr<Runtime> open(const std::string& path, const edgeprune_options& options);
  // Checks the request against the model before anything changes, then runs it.
  void infer(const edgeprune_frame* frame, const edgeprune_request* request, edgeprune_result* result);
  virtual void reset_stream(uint64_t stream) = 0;
  virtual void info(edgeprune_info* info) const = 0;
  virtual int engines() const = 0;
  virtual std::string engine_name(int index) const = 0;
  virtual double engine_budget(int index) const = 0;

 protected:
  Runtime(const InputSpec& input, int classes) : input_(input), classes_(classes), norm_(input.mean, input.std) {}
  virtual void run(const Call& call, edgeprune_result* result, double start_ms) = 0;
  // Resize to the model size (when needed) and normalise; returns the resized frame's pixels.
  void preprocess(const ImageView& frame, std::vector<uint8_t>& resized, std::vector<float>& pixels) const;
  // Labels (input or model size) from logits [classes, h, w].
  void postprocess(const Call& call, const float* logits, edgeprune_result* result) const;

  InputSpec input_;
  int classes_;
  Normalizer norm_;
};

}  // namespace edgeprune
