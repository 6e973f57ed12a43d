// Labels from logits: argmax at the model's size, and bilinear upsampling + argmax at the frame's
// size, bit-exact with edgeprune.imaging.frames.labels_exact (see image.hpp).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "image.hpp"

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace edgeprune {

// numpy.argmax semantics: the first maximum; a NaN wins (numpy treats NaN as the maximum). Written
// without branches over blocks of pixels so that the class loop vectorises: a class replaces the
// best only while the best is not NaN and it is NaN or larger, the scalar rule's exact decisions.
void argmax_labels(const float* logits, int classes, int h, int w, uint8_t* labels) {
  const size_t plane = static_cast<size_t>(h) * static_cast<size_t>(w);
  constexpr size_t kBlock = 256;
  float bv[kBlock];
  int32_t bi[kBlock];
  for (size_t i0 = 0; i0 < plane; i0 += kBlock) {
    const size_t n = std::min(kBlock, plane - i0);
    const float* __restrict p0 = logits + i0;
    for (size_t j = 0; j < n; ++j) bv[j] = p0[j], bi[j] = 0;
    for (int k = 1; k < classes; ++k) {
      const float* __restrict p = logits + static_cast<size_t>(k) * plane + i0;
      for (size_t j = 0; j < n; ++j) {  // integer masks: gcc if-converts these, not bool selects
        const float v = p[j], b = bv[j];
        const int32_t m = -static_cast<int32_t>(b == b) & (-static_cast<int32_t>(v != v) | -static_cast<int32_t>(v > b));
        bv[j] = m ? v : b;
        bi[j] = (bi[j] & ~m) | (k & m);
      }
    }
    for (size_t j = 0; j < n; ++j) labels[i0 + j] = static_cast<uint8_t>(bi[j]);
  }
}

namespace {
struct Taps {
  int n_in = -1, n_out = -1;
  std::vector<int> i0, i1;
  std::vector<float> w;
};

// _bilinear_taps: torch's align_corners=False sampling, computed in float64, weights in float32.
// Kept per thread for the last size pair (a video keeps its size).
const Taps& bilinear_taps(Taps& t, int n_in, int n_out) {
  if (t.n_in == n_in && t.n_out == n_out) return t;
  t.i0.clear(), t.i1.clear(), t.w.clear();
  const double ratio = static_cast<double>(n_in) / n_out;
  for (int i = 0; i < n_out; ++i) {
    double src = (i + 0.5) * ratio - 0.5;
    if (src < 0) src = 0;
    int i0 = std::min(static_cast<int>(std::floor(src)), n_in - 1);
    t.i0.push_back(i0);
    t.i1.push_back(std::min(i0 + 1, n_in - 1));
    t.w.push_back(static_cast<float>(src - i0));
  }
  t.n_in = n_in, t.n_out = n_out;
  return t;
}

// Fault the caller's output pages in with one call: callers often pass fresh memory (numpy's
// np.empty of a 1080p frame is a new mapping), whose first writes otherwise take one page fault
// each, measured at ~1 ms per 2 MB here against ~0.6 ms this way. Contents are left as they are;
// any failure (old kernel, odd mapping) is harmless: the writes fault the pages in as before.
void prefault(uint8_t* p, size_t n) {
#if defined(__linux__) && defined(MADV_POPULATE_WRITE)
  static const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  if (n < 32 * page) return;
  const uintptr_t b = (reinterpret_cast<uintptr_t>(p) + page - 1) & ~(page - 1);
  const uintptr_t e = (reinterpret_cast<uintptr_t>(p) + n) & ~(page - 1);
  if (e > b) (void)madvise(reinterpret_cast<void*>(b), e - b, MADV_POPULATE_WRITE);
#else
  (void)p, (void)n;
#endif
}

// A mixed cell of the current source-row pair: output columns [x_begin, x_end), its candidate
// classes cand[c_off + c] and their horizontally interpolated values on both source rows,
// top/bottom[v_off + c * width + j], the same for every output row of the pair.
struct Cell {
  int x_begin, x_end, ncand, c_off, v_off;
  bool fast;  // no NaN in the cell and every candidate corner within +-1e30: no NaN can arise
};
}  // namespace

// Exact per-column rule of labels_exact for cells that may hold or produce NaN.
static void eval_exact(const Cell& c, const uint8_t* cand, const float* top, const float* bottom, float wy, float wy1, uint8_t* out) {
  const int n = c.x_end - c.x_begin;
  for (int j = 0; j < n; ++j) {
    int best = -1;
    float bv = 0.f;
    for (int k = 0; k < c.ncand; ++k) {
      const size_t at = static_cast<size_t>(c.v_off) + static_cast<size_t>(k) * static_cast<size_t>(n) + static_cast<size_t>(j);
      float v = top[at] * wy1;
      v = v + bottom[at] * wy;
      if (best < 0) {
        best = cand[c.c_off + k], bv = v;
      } else if (!std::isnan(bv) && (std::isnan(v) || v > bv)) {  // numpy: the first NaN wins
        best = cand[c.c_off + k], bv = v;
      }
    }
    out[c.x_begin + j] = static_cast<uint8_t>(best);
  }
}

// The same when no value can be NaN: then the rule is "replace on strictly greater", which runs
// branch-free over the cell's columns, one candidate at a time (vectorised; the 32-bit mask select
// is what gcc if-converts).
static void eval_fast(const Cell& c, const uint8_t* cand, const float* top, const float* bottom, float wy, float wy1,
                      uint8_t* out, float* __restrict bv, int32_t* __restrict bi) {
  const int n = c.x_end - c.x_begin;
  const float* __restrict t = top + c.v_off;
  const float* __restrict b = bottom + c.v_off;
  const int32_t first = cand[c.c_off];
  for (int j = 0; j < n; ++j) {
    float v = t[j] * wy1;
    v = v + b[j] * wy;
    bv[j] = v;
    bi[j] = first;
  }
  for (int k = 1; k < c.ncand; ++k) {
    const int32_t label = cand[c.c_off + k];
    const float* __restrict tk = t + static_cast<size_t>(k) * static_cast<size_t>(n);
    const float* __restrict bk = b + static_cast<size_t>(k) * static_cast<size_t>(n);
    for (int j = 0; j < n; ++j) {
      float v = tk[j] * wy1;
      v = v + bk[j] * wy;
      const float o = bv[j];
      const int32_t m = -static_cast<int32_t>(v > o);
      bv[j] = v > o ? v : o;
      bi[j] = (bi[j] & ~m) | (label & m);
    }
  }
  uint8_t* __restrict o = out + c.x_begin;
  for (int j = 0; j < n; ++j) o[j] = static_cast<uint8_t>(bi[j]);
}

// Rows are handled per source-row pair (y0, y1) and columns per source column x0 (the output
// columns and rows sharing them are consecutive runs): a pair builds one template row, uniform
// cells written as runs, and the mixed cells' horizontal values; each of its output rows is then
// the template copied plus the mixed cells evaluated with the row's weight.
void upsample_argmax(const float* logits, int classes, int h, int w, uint8_t* labels, int height, int width) {
  const size_t plane = static_cast<size_t>(h) * static_cast<size_t>(w);
  const size_t K = static_cast<size_t>(classes);
  static thread_local Taps tx_cache, ty_cache;
  const Taps& tx = bilinear_taps(tx_cache, w, width);
  const Taps& ty = bilinear_taps(ty_cache, h, height);
  Scratch& sc = scratch();
  uint8_t* low = grow(sc.low, plane);
  argmax_labels(logits, classes, h, w, low);
  prefault(labels, static_cast<size_t>(width) * static_cast<size_t>(height));

  std::vector<int>& runs = sc.runs;  // (x0, begin, end) per run of output columns sharing x0
  runs.clear();
  for (int x = 0; x < width;) {
    const int x0 = tx.i0[static_cast<size_t>(x)];
    int e = x + 1;
    while (e < width && tx.i0[static_cast<size_t>(e)] == x0) ++e;
    runs.insert(runs.end(), {x0, x, e});
    x = e;
  }
  uint8_t* row = grow(sc.row, static_cast<size_t>(width));
  float* value = grow(sc.value, static_cast<size_t>(width));
  int32_t* index = grow(sc.index, static_cast<size_t>(width));
  static thread_local std::vector<Cell> cells;
  std::vector<uint8_t>& cand = sc.cand;
  std::vector<float>&top = sc.top, &bottom = sc.bottom;

  for (int y = 0; y < height;) {
    const int y0 = ty.i0[static_cast<size_t>(y)], y1 = ty.i1[static_cast<size_t>(y)];
    int y_end = y + 1;
    while (y_end < height && ty.i0[static_cast<size_t>(y_end)] == y0) ++y_end;
    const size_t r0 = static_cast<size_t>(y0) * static_cast<size_t>(w), r1 = static_cast<size_t>(y1) * static_cast<size_t>(w);
    cells.clear(), cand.clear(), top.clear(), bottom.clear();
    for (size_t r = 0; r < runs.size(); r += 3) {
      const size_t x0 = static_cast<size_t>(runs[r]), x1 = static_cast<size_t>(tx.i1[static_cast<size_t>(runs[r + 1])]);
      const int xb = runs[r + 1], xe = runs[r + 2];
      const uint8_t l = low[r0 + x0];
      if (low[r0 + x1] == l && low[r1 + x0] == l && low[r1 + x1] == l) {  // uniform: that class throughout
        std::memset(row + xb, l, static_cast<size_t>(xe - xb));
        continue;
      }
      // A class can win inside the cell only if its best corner reaches the best worst corner
      // of any class (every blend stays within its corners' range); the margin covers rounding.
      float best_min = -INFINITY;
      bool cell_nan = false;
      for (size_t k = 0; k < K; ++k) {
        const float* p = logits + k * plane;
        const float a = p[r0 + x0], b = p[r0 + x1], c = p[r1 + x0], d = p[r1 + x1];
        cell_nan = cell_nan || std::isnan(a) || std::isnan(b) || std::isnan(c) || std::isnan(d);
        best_min = std::max(best_min, std::min(std::min(a, b), std::min(c, d)));
      }
      const float bar = best_min - 1e-5f * std::fabs(best_min) - 1e-30f;
      Cell cell{xb, xe, 0, static_cast<int>(cand.size()), static_cast<int>(top.size()), !cell_nan};
      for (size_t k = 0; k < K; ++k) {
        const float* p = logits + k * plane;
        const float a = p[r0 + x0], b = p[r0 + x1], c = p[r1 + x0], d = p[r1 + x1];
        if (!cell_nan && !(std::max(std::max(a, b), std::max(c, d)) >= bar)) continue;  // bar may be NaN
        cell.fast = cell.fast && std::fabs(a) <= 1e30f && std::fabs(b) <= 1e30f && std::fabs(c) <= 1e30f && std::fabs(d) <= 1e30f;
        cand.push_back(static_cast<uint8_t>(k));
        ++cell.ncand;
        for (int x = xb; x < xe; ++x) {
          const float wx = tx.w[static_cast<size_t>(x)], wx1 = 1.0f - wx;
          float h0 = a * wx1;  // labels_exact's float32 order: horizontal pass first
          h0 = h0 + b * wx;
          float h1 = c * wx1;
          h1 = h1 + d * wx;
          top.push_back(h0);
          bottom.push_back(h1);
        }
      }
      cell.fast = cell.fast && cell.ncand > 0;
      cells.push_back(cell);
    }
    for (; y < y_end; ++y) {
      uint8_t* out = labels + static_cast<size_t>(y) * static_cast<size_t>(width);
      std::memcpy(out, row, static_cast<size_t>(width));
      const float wy = ty.w[static_cast<size_t>(y)], wy1 = 1.0f - wy;
      for (const Cell& c : cells) {
        if (c.fast) eval_fast(c, cand.data(), top.data(), bottom.data(), wy, wy1, out, value, index);
        else eval_exact(c, cand.data(), top.data(), bottom.data(), wy, wy1, out);
      }
    }
  }
}

}  // namespace edgeprune
