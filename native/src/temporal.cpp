// Temporal reuse: a port of edgeprune/runtime/temporal.py. Per stream, the patches that moved most
// are recomputed by the `update` graph against the stream's caches; the `refresh` graph recomputes
// everything on the first frame, every refresh_every frames, and when the stale change drifts.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "common.hpp"
#include "runtime.hpp"

namespace edgeprune {

// numpy's float32 pairwise summation (the order np.sum/np.mean use), so means match bit for bit.
static float pairwise_sum(const float* a, size_t n) {
  if (n < 8) {
    float r = -0.0f;
    for (size_t i = 0; i < n; ++i) r += a[i];
    return r;
  }
  if (n <= 128) {
    float r[8];
    for (int j = 0; j < 8; ++j) r[j] = a[j];
    size_t i = 8;
    for (; i < n - (n % 8); i += 8)
      for (int j = 0; j < 8; ++j) r[j] += a[i + static_cast<size_t>(j)];
    float res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; ++i) res += a[i];
    return res;
  }
  size_t n2 = n / 2;
  n2 -= n2 % 8;
  return pairwise_sum(a, n2) + pairwise_sum(a + n2, n - n2);
}

namespace {

struct Stream {
  std::mutex lock;
  bool has_reference = false;
  std::vector<float> reference;            // [patches, F]: features each patch was last computed on
  std::vector<std::vector<float>> caches;  // in cache_names order
  int64_t frames = 0;
  int since_refresh = 0;
};

class TemporalRuntime : public Runtime {
 public:
  TemporalRuntime(TemporalSpec spec, std::shared_ptr<OrtLibrary> lib, const edgeprune_options& o, int threads,
                  const std::string& provider)
      : Runtime(spec.input, 0), spec_(std::move(spec)),
        refresh_(lib, spec_.refresh_path, provider, threads), update_(lib, spec_.update_path, provider, threads) {
    refresh_every_ = o.refresh_every ? o.refresh_every : 30;
    drift_threshold_ = o.drift_threshold != 0.0 ? o.drift_threshold : 2.0;
    if (refresh_every_ < 1) fail(EDGEPRUNE_INVALID_ARGUMENT, "refresh_every must be >= 1, got " + std::to_string(refresh_every_));
    if (!(drift_threshold_ > 0)) fail(EDGEPRUNE_INVALID_ARGUMENT, "drift_threshold must be > 0");
    target_ms_ = o.target_ms > 0 ? o.target_ms : 0.0;
    for (const auto& out : refresh_.outputs())
      if (out.name == "logits" && out.shape.size() == 4) classes_ = static_cast<int>(out.shape[1]);
    if (classes_ < 1) fail(EDGEPRUNE_UNSUPPORTED, spec_.refresh_path + ": no dense 'logits' output");
    for (const auto& shape : spec_.cache_shapes) {
      size_t n = 1;
      for (int64_t d : shape) n *= static_cast<size_t>(d);
      cache_sizes_.push_back(n);
    }
    all_.resize(static_cast<size_t>(spec_.patches));
    std::iota(all_.begin(), all_.end(), 0);
  }

  void reset_stream(uint64_t stream) override {
    std::lock_guard<std::mutex> lock(mu_);
    streams_.erase(stream);
  }
  void info(edgeprune_info* info) const override {
    info->kind = EDGEPRUNE_TEMPORAL;
    info->engines = 2;
    info->width = input_.width, info->height = input_.height, info->classes = classes_;
    copy_field(info->provider, refresh_.provider());
    copy_field(info->backend, "onnxruntime");
  }
  int engines() const override { return 2; }
  std::string engine_name(int i) const override { return i == 0 ? "refresh" : "update"; }
  double engine_budget(int i) const override { return i == 0 ? 1.0 : static_cast<double>(spec_.recompute) / spec_.patches; }

 protected:
  // patch_features: colour means of each patch's 2x2 sub-blocks (F = 12), or of the whole patch (F = 3).
  std::vector<float> features(const uint8_t* rgb) const {
    const int gh = spec_.grid_h, gw = spec_.grid_w, ph = input_.height / gh, pw = input_.width / gw;
    const int split = (ph % 2 == 0 && pw % 2 == 0) ? 2 : 1, sh = ph / split, sw = pw / split;
    const float count = static_cast<float>(sh * sw);
    std::vector<float> f(static_cast<size_t>(gh * gw * split * split * 3));
    size_t k = 0;
    for (int py = 0; py < gh; ++py)
      for (int px = 0; px < gw; ++px)
        for (int sy = 0; sy < split; ++sy)
          for (int sx = 0; sx < split; ++sx) {
            long sum[3] = {0, 0, 0};  // integer sums: exact, like numpy's float32 sums of bytes
            for (int y = 0; y < sh; ++y) {
              const uint8_t* p = rgb + (static_cast<size_t>(py * ph + sy * sh + y) * static_cast<size_t>(input_.width) +
                                        static_cast<size_t>(px * pw + sx * sw)) * 3;
              for (int x = 0; x < sw; ++x)
                for (int c = 0; c < 3; ++c) sum[c] += p[x * 3 + c];
            }
            for (int c = 0; c < 3; ++c) f[k++] = static_cast<float>(sum[c]) / count;
          }
    return f;
  }

  void run(const Call& call, edgeprune_result* r, double start) override {
    std::vector<uint8_t> small;
    std::vector<float> pixels;
    preprocess(call.frame, small, pixels);
    const std::vector<float> feats = features(small.data());
    const size_t P = static_cast<size_t>(spec_.patches), F = feats.size() / P;
    const double t_pre = now_ms();
    std::shared_ptr<Stream> state;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto& slot = streams_[call.stream];
      if (!slot) slot = std::make_shared<Stream>();
      state = slot;
    }
    std::lock_guard<std::mutex> lock(state->lock);
    std::string reason;
    double drift = 0.0;
    std::vector<int64_t> index;
    if (!state->has_reference) {
      reason = "first frame";
    } else if (state->since_refresh + 1 >= refresh_every_) {
      reason = "every " + std::to_string(refresh_every_) + " frames";
    } else {
      std::vector<float> change(P), diff(F);
      for (size_t p = 0; p < P; ++p) {
        for (size_t j = 0; j < F; ++j) diff[j] = std::fabs(feats[p * F + j] - state->reference[p * F + j]);
        change[p] = pairwise_sum(diff.data(), F) / static_cast<float>(F);
      }
      drift = choose(change, index);
      if (drift > drift_threshold_) {
        char text[64];
        CLocaleScope c_locale;  // "drift 2.50 > 2", not "2,50" in a de_DE application
        std::snprintf(text, sizeof text, "drift %.2f > %g", drift, drift_threshold_);
        reason = text;
      }
    }
    const size_t count = static_cast<size_t>(classes_) * static_cast<size_t>(input_.width) * static_cast<size_t>(input_.height);
    std::vector<float> own;
    float* logits = call.logits_out;
    if (!logits) {
      own.resize(count);
      logits = own.data();
    }
    std::vector<std::vector<float>> next(spec_.cache_names.size());
    std::vector<std::string> next_names;
    std::vector<Binding> outs{{"logits", logits, count * sizeof(float)}};
    for (size_t i = 0; i < next.size(); ++i) {
      next[i].resize(cache_sizes_[i]);
      next_names.push_back("next_" + spec_.cache_names[i].substr(6));
    }
    for (size_t i = 0; i < next.size(); ++i) outs.push_back({next_names[i].c_str(), next[i].data(), next[i].size() * sizeof(float)});
    const double t1 = now_ms();
    if (!reason.empty()) {  // refresh takes the pixels alone and fills every cache
      drift = 0.0;
      index = all_;
      refresh_.run({{"pixel_values", pixels.data(), pixels.size() * sizeof(float)}}, outs);
    } else {
      std::vector<Binding> ins{{"pixel_values", pixels.data(), pixels.size() * sizeof(float)},
                               {"update_index", index.data(), index.size() * sizeof(int64_t)}};
      for (size_t i = 0; i < next.size(); ++i)
        ins.push_back({spec_.cache_names[i].c_str(), state->caches[i].data(), state->caches[i].size() * sizeof(float)});
      update_.run(ins, outs);
    }
    const double t2 = now_ms();
    state->caches = std::move(next);
    if (!reason.empty()) {
      state->reference = feats;
      state->has_reference = true;
      state->since_refresh = 0;
    } else {
      for (int64_t p : index)
        std::copy_n(feats.begin() + static_cast<long>(static_cast<size_t>(p) * F), F,
                    state->reference.begin() + static_cast<long>(static_cast<size_t>(p) * F));
      state->since_refresh += 1;
    }
    r->frame = state->frames++;
    postprocess(call, logits, r);
    const double t3 = now_ms();
    const bool refreshed = !reason.empty();
    r->engine_index = refreshed ? 0 : 1;
    copy_field(r->engine, refreshed ? "refresh" : "update");
    r->budget = static_cast<double>(index.size()) / static_cast<double>(P);
    copy_field(r->provider, refresh_.provider());
    copy_field(r->reason, reason);
    r->refreshed = refreshed;
    r->drift = drift;
    r->pre_ms = t_pre - start;
    r->engine_ms = t2 - t1;
    r->post_ms = t3 - t2;
    r->scheduler_ms = t1 - t_pre;
    r->total_ms = now_ms() - start;
    r->deadline_met = call.deadline_ms > 0 ? r->total_ms <= call.deadline_ms : (target_ms_ > 0 ? r->total_ms <= target_ms_ : 1);
  }

  // choose_patches: the `recompute` most changed patches (ascending indices) and the mean change of
  // the rest. Equal changes at the cut go to the lower index (numpy's argpartition picks among
  // ties in its own way; see docs/native.md).
  double choose(const std::vector<float>& change, std::vector<int64_t>& index) const {
    const size_t P = change.size(), M = static_cast<size_t>(spec_.recompute);
    if (M >= P) {
      index = all_;
      return 0.0;
    }
    std::vector<int64_t> order(all_);
    std::partial_sort(order.begin(), order.begin() + static_cast<long>(M), order.end(), [&](int64_t a, int64_t b) {
      const float ca = change[static_cast<size_t>(a)], cb = change[static_cast<size_t>(b)];
      return ca > cb || (ca == cb && a < b);
    });
    index.assign(order.begin(), order.begin() + static_cast<long>(M));
    std::sort(index.begin(), index.end());
    std::vector<bool> chosen(P, false);
    for (int64_t i : index) chosen[static_cast<size_t>(i)] = true;
    std::vector<float> stale;
    for (size_t i = 0; i < P; ++i)
      if (!chosen[i]) stale.push_back(change[i]);
    return static_cast<double>(pairwise_sum(stale.data(), stale.size()) / static_cast<float>(stale.size()));
  }

 private:
  TemporalSpec spec_;
  OrtModel refresh_, update_;
  int refresh_every_ = 30;
  double drift_threshold_ = 2.0, target_ms_ = 0.0;
  std::vector<size_t> cache_sizes_;
  std::vector<int64_t> all_;
  std::mutex mu_;
  std::map<uint64_t, std::shared_ptr<Stream>> streams_;  // shared: a reset never frees a running stream
};

}  // namespace

std::unique_ptr<Runtime> make_temporal_runtime(const TemporalSpec& spec, std::shared_ptr<OrtLibrary> lib,
                                               const edgeprune_options& o) {
  const std::string provider = o.provider && *o.provider ? o.provider : "cpu";
  return std::unique_ptr<Runtime>(new TemporalRuntime(spec, std::move(lib), o, o.threads ? o.threads : 2, provider));
}

}  // namespace edgeprune
