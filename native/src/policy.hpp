// Per-frame engine choice: a line-by-line port of edgeprune/runtime/policies.py. Decisions must
// equal the Python policies' on the same inputs, so every floating-point expression keeps Python's
// operation order (the library is compiled with -ffp-contract=off: no fused multiply-adds).
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

namespace edgeprune {

struct Profile {
  std::string name;
  double budget;
  double p50_ms;
  double p95_ms;
};

struct Decision {
  int index = 0;
  double budget = 0.0;
  double predicted_ms = 0.0;
  std::string reason;
};

struct FrameContext {
  int64_t frame = 0;
  bool has_content = false;
  double content = 0.0;
  bool has_deadline = false;
  double deadline_ms = 0.0;
};

class Policy {
 public:
  explicit Policy(std::vector<Profile> profiles);
  virtual ~Policy() = default;
  virtual Decision choose(const FrameContext& ctx) = 0;
  virtual void observe(int /*index*/, double /*latency_ms*/) {}
  const std::vector<Profile>& profiles() const { return profiles_; }

 protected:
  std::vector<Profile> profiles_;
};

class DeadlinePolicy : public Policy {
 public:
  struct Params {
    double alpha = 0.1, margin_quantile = 0.95, safety_ms = 0.0;
    int window = 50, hysteresis_frames = 5, shift_frames = 3;
  };
  DeadlinePolicy(std::vector<Profile> profiles, double target_ms, Params params);
  Decision choose(const FrameContext& ctx) override;
  void observe(int index, double latency_ms) override;
  int allowed(double deadline_ms) const;
  double scale() const { return scale_; }
  double p50(int i) const { return p50_[static_cast<size_t>(i)]; }

 private:
  double target_ms_;
  Params p_;
  std::vector<double> p50_;
  double prior_margin_;
  double scale_ = 1.0, margin_ = 0.0;
  std::deque<double> resid_, recent_;
  int current_ = -1;  // -1: no frame chosen yet (Python's None)
  int streak_ = 0, streak_best_ = 0;
};

class ContentPolicy : public Policy {
 public:
  ContentPolicy(std::vector<Profile> profiles, double low, double high);
  int desired(bool has_content, double content) const;
  Decision choose(const FrameContext& ctx) override;

 private:
  double low_, high_;
};

// Builds a policy by name from "key=value,..." parameters; errors are one-line edgeprune::Error.
std::unique_ptr<Policy> make_policy(const std::string& name, const std::vector<Profile>& profiles, double target_ms,
                                    const std::string& args);

// Content signals of edgeprune.runtime.policies (32x32 luma thumbnails).
constexpr int kThumb = 32;
void downscale_gray(const uint8_t* rgb, int width, int height, size_t stride, uint8_t* out /* kThumb*kThumb */);
double frame_change(const uint8_t* previous /* nullable */, const uint8_t* current);
double frame_complexity(const uint8_t* thumbnail);

}  // namespace edgeprune
