#include "policy.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <locale>
#include <map>
#include <sstream>

#include "common.hpp"

namespace edgeprune {

static std::string fmt(double v) {
  std::ostringstream s;
  s.imbue(std::locale::classic());  // whatever std::locale::global the application set
  s << v;
  return s.str();
}

Policy::Policy(std::vector<Profile> profiles) : profiles_(std::move(profiles)) {
  if (profiles_.empty()) fail(EDGEPRUNE_INVALID_ARGUMENT, "scheduler: no engine profiles given");
  for (const auto& p : profiles_)
    if (!(p.p50_ms > 0 && p.p95_ms >= p.p50_ms && p.budget > 0))
      fail(EDGEPRUNE_INVALID_ARGUMENT, "scheduler: engine '" + p.name + "' needs budget > 0 and 0 < p50_ms <= p95_ms");
  for (size_t i = 1; i < profiles_.size(); ++i)
    if (profiles_[i - 1].budget <= profiles_[i].budget)
      fail(EDGEPRUNE_INVALID_ARGUMENT, "scheduler: profiles must be sorted by budget, largest first");
}

// --- fixed ---------------------------------------------------------------------------------------
class FixedPolicy : public Policy {
 public:
  FixedPolicy(std::vector<Profile> profiles, int index) : Policy(std::move(profiles)) {
    if (index < 0 || index >= static_cast<int>(profiles_.size()))
      fail(EDGEPRUNE_INVALID_ARGUMENT, "scheduler: fixed engine index " + std::to_string(index) + " out of range 0.." +
                                           std::to_string(profiles_.size() - 1));
    const Profile& p = profiles_[static_cast<size_t>(index)];
    decision_ = Decision{index, p.budget, p.p50_ms, "fixed"};
  }
  Decision choose(const FrameContext&) override { return decision_; }

 private:
  Decision decision_;
};

// --- deadline ------------------------------------------------------------------------------------
static double quantile(std::vector<double> s, double q) {
  std::sort(s.begin(), s.end());
  double pos = q * static_cast<double>(s.size() - 1);
  size_t lo = static_cast<size_t>(pos);  // int() truncation, pos >= 0
  size_t hi = std::min(lo + 1, s.size() - 1);
  return s[lo] + (s[hi] - s[lo]) * (pos - static_cast<double>(lo));
}

DeadlinePolicy::DeadlinePolicy(std::vector<Profile> profiles, double target_ms, Params params)
    : Policy(std::move(profiles)), target_ms_(target_ms), p_(params) {
  if (!(target_ms > 0)) fail(EDGEPRUNE_INVALID_ARGUMENT, "scheduler: target_ms must be > 0, got " + fmt(target_ms));
  if (!(0 < p_.alpha && p_.alpha <= 1 && 0 < p_.margin_quantile && p_.margin_quantile < 1 && p_.window >= 2 &&
        p_.hysteresis_frames >= 0 && p_.safety_ms >= 0 && p_.shift_frames >= 1))
    fail(EDGEPRUNE_INVALID_ARGUMENT,
         "scheduler: need 0 < alpha <= 1, 0 < margin_quantile < 1, window >= 2, hysteresis_frames >= 0, "
         "safety_ms >= 0, shift_frames >= 1");
  double worst = 0.0;
  for (size_t i = 0; i < profiles_.size(); ++i) {
    p50_.push_back(profiles_[i].p50_ms);
    double r = profiles_[i].p95_ms / profiles_[i].p50_ms;
    worst = i == 0 ? r : std::max(worst, r);
  }
  prior_margin_ = worst - 1.0;
  margin_ = prior_margin_;
}

int DeadlinePolicy::allowed(double deadline_ms) const {
  double limit = (deadline_ms - p_.safety_ms) / (scale_ * (1.0 + margin_));
  for (size_t i = 0; i < p50_.size(); ++i)
    if (p50_[i] <= limit) return static_cast<int>(i);
  return -1;
}

Decision DeadlinePolicy::choose(const FrameContext& ctx) {
  double deadline = ctx.has_deadline ? ctx.deadline_ms : target_ms_;
  int best = allowed(deadline);
  int cur = current_;
  std::string reason;
  if (best < 0) {
    best = static_cast<int>(p50_.size()) - 1;
    reason = "unreachable";
    cur = best;
    streak_ = 0;
  } else if (cur < 0 || best > cur) {
    reason = cur < 0 ? "start" : "down";
    cur = best;
    streak_ = 0;
  } else if (best < cur) {
    streak_ += 1;
    streak_best_ = streak_ == 1 ? best : std::max(streak_best_, best);
    if (streak_ > p_.hysteresis_frames - 1) {
      cur = streak_best_;
      reason = "up";
      streak_ = 0;
    } else {
      reason = "hold";
    }
  } else {
    reason = "fit";
    streak_ = 0;
  }
  current_ = cur;
  const size_t c = static_cast<size_t>(cur);
  return Decision{cur, profiles_[c].budget, p50_[c] * scale_, reason};
}

void DeadlinePolicy::observe(int index, double latency_ms) {
  double ratio = latency_ms / p50_[static_cast<size_t>(index)];
  auto push = [](std::deque<double>& d, double v, size_t maxlen) {
    d.push_back(v);
    while (d.size() > maxlen) d.pop_front();
  };
  push(resid_, ratio / scale_, static_cast<size_t>(p_.window));
  push(recent_, ratio, static_cast<size_t>(p_.shift_frames));
  double band_hi = 1.0 + margin_;
  bool shifted = false;
  if (recent_.size() == static_cast<size_t>(p_.shift_frames)) {
    bool all_hi = true, all_lo = true;
    for (double r : recent_) {
      all_hi = all_hi && r > band_hi * scale_;
      all_lo = all_lo && r * band_hi < scale_;
    }
    shifted = all_hi || all_lo;
  }
  if (shifted) {
    std::vector<double> sorted(recent_.begin(), recent_.end());
    std::sort(sorted.begin(), sorted.end());
    scale_ = sorted[sorted.size() / 2];
    // the shift's own residuals are not noise: re-express them at the new level
    for (size_t k = 0; k < recent_.size() && !resid_.empty(); ++k) resid_.pop_back();
    for (double r : recent_) push(resid_, r / scale_, static_cast<size_t>(p_.window));
    recent_.clear();
  } else {
    scale_ += p_.alpha * (ratio - scale_);
  }
  if (resid_.size() >= 10) {
    margin_ = std::max(0.0, quantile(std::vector<double>(resid_.begin(), resid_.end()), p_.margin_quantile) - 1.0);
  }
}

// --- content -------------------------------------------------------------------------------------
ContentPolicy::ContentPolicy(std::vector<Profile> profiles, double low, double high)
    : Policy(std::move(profiles)), low_(low), high_(high) {
  if (!(0 <= low && low < high))
    fail(EDGEPRUNE_INVALID_ARGUMENT,
         "scheduler: content thresholds need 0 <= low < high, got low=" + fmt(low) + " high=" + fmt(high));
}

int ContentPolicy::desired(bool has_content, double content) const {
  if (!has_content || content >= high_) return 0;
  const double b0 = profiles_.front().budget, blast = profiles_.back().budget;
  double t = std::max(0.0, (content - low_) / (high_ - low_));
  double want = blast + t * (b0 - blast);
  for (int i = static_cast<int>(profiles_.size()) - 1; i >= 0; --i)  // smallest budget >= want
    if (profiles_[static_cast<size_t>(i)].budget >= want - 1e-12) return i;
  return 0;
}

Decision ContentPolicy::choose(const FrameContext& ctx) {
  int i = desired(ctx.has_content, ctx.content);
  const Profile& p = profiles_[static_cast<size_t>(i)];
  return Decision{i, p.budget, p.p50_ms, "content"};
}

// --- combined: content proposes, deadline disposes ------------------------------------------------
class CombinedPolicy : public Policy {
 public:
  CombinedPolicy(std::vector<Profile> profiles, double target_ms, DeadlinePolicy::Params dp, double low, double high)
      : Policy(profiles), deadline_(profiles, target_ms, dp), content_(profiles, low, high) {}
  Decision choose(const FrameContext& ctx) override {
    Decision d = deadline_.choose(ctx);
    int c = content_.desired(ctx.has_content, ctx.content);
    if (c <= d.index) return d;
    return Decision{c, profiles_[static_cast<size_t>(c)].budget, deadline_.p50(c) * deadline_.scale(), "content"};
  }
  void observe(int index, double latency_ms) override { deadline_.observe(index, latency_ms); }

 private:
  DeadlinePolicy deadline_;
  ContentPolicy content_;
};

// --- factory -------------------------------------------------------------------------------------
static std::map<std::string, std::string> parse_args(const std::string& name, const std::string& args) {
  std::map<std::string, std::string> out;
  std::stringstream ss(args);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.find_first_not_of(" \t") == std::string::npos) continue;
    size_t eq = item.find('=');
    if (eq == std::string::npos)
      fail(EDGEPRUNE_INVALID_ARGUMENT, "scheduler: bad parameter for policy '" + name + "': '" + item + "' is not name=value");
    auto trim = [](std::string s) {
      s.erase(0, s.find_first_not_of(" \t"));
      s.erase(s.find_last_not_of(" \t") + 1);
      return s;
    };
    out[trim(item.substr(0, eq))] = trim(item.substr(eq + 1));
  }
  return out;
}

namespace {
struct ArgReader {
  std::string policy;
  std::map<std::string, std::string> args;
  double real(const std::string& key, double fallback) {
    auto it = args.find(key);
    if (it == args.end()) return fallback;
    char* end = nullptr;
    CLocaleScope c_locale;  // "alpha=0.25" whatever the application's LC_NUMERIC
    double v = std::strtod(it->second.c_str(), &end);
    if (it->second.empty() || *end != '\0')
      fail(EDGEPRUNE_INVALID_ARGUMENT, "scheduler: bad parameter for policy '" + policy + "': " + key + "=" + it->second +
                                           " is not a number");
    args.erase(it);
    return v;
  }
  int integer(const std::string& key, int fallback) {
    auto it = args.find(key);
    if (it == args.end()) return fallback;
    char* end = nullptr;
    long v = std::strtol(it->second.c_str(), &end, 10);
    if (it->second.empty() || *end != '\0' || v < -1000000000L || v > 1000000000L)
      fail(EDGEPRUNE_INVALID_ARGUMENT, "scheduler: bad parameter for policy '" + policy + "': " + key + "=" + it->second +
                                           " is not an integer");
    args.erase(it);
    return static_cast<int>(v);
  }
  void done() {
    if (!args.empty())
      fail(EDGEPRUNE_INVALID_ARGUMENT, "scheduler: bad parameter for policy '" + policy + "': unexpected keyword argument '" +
                                           args.begin()->first + "'");
  }
};
}  // namespace

std::unique_ptr<Policy> make_policy(const std::string& name, const std::vector<Profile>& profiles, double target_ms,
                                    const std::string& args) {
  if (name != "fixed" && name != "deadline" && name != "content" && name != "combined")
    fail(EDGEPRUNE_INVALID_ARGUMENT, "scheduler: unknown policy '" + name + "'; choose from fixed, deadline, content, combined");
  if (!(target_ms > 0)) fail(EDGEPRUNE_INVALID_ARGUMENT, "scheduler: target_ms must be > 0, got " + fmt(target_ms));
  ArgReader r{name, parse_args(name, args)};
  auto deadline_params = [&r]() {
    DeadlinePolicy::Params p;
    p.alpha = r.real("alpha", p.alpha);
    p.margin_quantile = r.real("margin_quantile", p.margin_quantile);
    p.window = r.integer("window", p.window);
    p.hysteresis_frames = r.integer("hysteresis_frames", p.hysteresis_frames);
    p.safety_ms = r.real("safety_ms", p.safety_ms);
    p.shift_frames = r.integer("shift_frames", p.shift_frames);
    return p;
  };
  std::unique_ptr<Policy> policy;
  if (name == "fixed") {
    int index = r.integer("index", 0);
    r.done();
    policy.reset(new FixedPolicy(profiles, index));
  } else if (name == "deadline") {
    auto p = deadline_params();
    r.done();
    policy.reset(new DeadlinePolicy(profiles, target_ms, p));
  } else if (name == "content") {
    double low = r.real("low", 0.1), high = r.real("high", 0.6);
    r.done();
    policy.reset(new ContentPolicy(profiles, low, high));
  } else {
    double low = r.real("low", 0.1), high = r.real("high", 0.6);
    auto p = deadline_params();
    r.done();
    policy.reset(new CombinedPolicy(profiles, target_ms, p, low, high));
  }
  return policy;
}

// --- content signals -----------------------------------------------------------------------------
void downscale_gray(const uint8_t* rgb, int width, int height, size_t stride, uint8_t* out) {
  const int m = 2 * kThumb;
  int rows[2 * kThumb], cols[2 * kThumb];
  if (height >= m && width >= m) {  // strided views, centred
    int sh = height / m, sw = width / m;
    for (int i = 0; i < m; ++i) {
      rows[i] = (height - sh * m) / 2 + i * sh;
      cols[i] = (width - sw * m) / 2 + i * sw;
    }
  } else {  // ((arange(m) + 0.5) * (h / m)).astype(intp)
    for (int i = 0; i < m; ++i) {
      rows[i] = static_cast<int>((i + 0.5) * (static_cast<double>(height) / m));
      cols[i] = static_cast<int>((i + 0.5) * (static_cast<double>(width) / m));
    }
  }
  for (int y = 0; y < kThumb; ++y) {
    for (int x = 0; x < kThumb; ++x) {
      unsigned sum = 0;
      for (int dy = 0; dy < 2; ++dy)
        for (int dx = 0; dx < 2; ++dx) {
          const uint8_t* p = rgb + static_cast<size_t>(rows[2 * y + dy]) * stride + static_cast<size_t>(cols[2 * x + dx]) * 3;
          sum += 2u * p[1] + p[0] + p[2];  // luma (R + 2G + B) / 4, summed over the 2x2 block
        }
      out[y * kThumb + x] = static_cast<uint8_t>(sum >> 4);
    }
  }
}

double frame_change(const uint8_t* previous, const uint8_t* current) {
  if (!previous) return 1.0;
  long sum = 0;
  for (int i = 0; i < kThumb * kThumb; ++i) sum += std::abs(static_cast<int>(previous[i]) - static_cast<int>(current[i]));
  return (static_cast<double>(sum) / (kThumb * kThumb)) / 255.0;
}

double frame_complexity(const uint8_t* g) {
  long dy = 0, dx = 0;
  for (int y = 0; y + 1 < kThumb; ++y)
    for (int x = 0; x < kThumb; ++x) dy += std::abs(g[(y + 1) * kThumb + x] - g[y * kThumb + x]);
  for (int y = 0; y < kThumb; ++y)
    for (int x = 0; x + 1 < kThumb; ++x) dx += std::abs(g[y * kThumb + x + 1] - g[y * kThumb + x]);
  const double n = static_cast<double>((kThumb - 1) * kThumb);
  double detail = static_cast<double>(dy) / n + static_cast<double>(dx) / n;
  return std::min(1.0, detail / 510.0);
}

}  // namespace edgeprune
