#include "image.hpp"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>

namespace edgeprune {

// OpenCV's saturate_cast<uchar>(float): round half to even (the FPU's default mode), then clamp.
static inline uint8_t round_u8(float v) {
  long r = std::lrintf(v);
  return static_cast<uint8_t>(r < 0 ? 0 : (r > 255 ? 255 : r));
}

static void copy_rows(const ImageView& src, uint8_t* dst) {
  const size_t row = static_cast<size_t>(src.width) * 3;
  for (int y = 0; y < src.height; ++y) std::memcpy(dst + row * static_cast<size_t>(y), src.data + src.stride * static_cast<size_t>(y), row);
}

// INTER_AREA, integer factors (OpenCV's "fast area" path): 2x2 rounds (sum + 2) >> 2 like its
// SIMD kernel; other factors round float(sum) * (1.f / area) half to even like its scalar loop.
template <typename Acc>
static void area_fast_rows(const ImageView& src, uint8_t* dst, int width, int height, int kx, int ky) {
  const int row = width * 3, span = kx * row;
  // Column sums over the block's rows (integers: the order is free), restrict-qualified and as
  // narrow as the block allows so the widening adds vectorise.
  std::vector<Acc> sums(static_cast<size_t>(span));
  Acc* __restrict cols = sums.data();
  const float scale = 1.f / static_cast<float>(kx * ky);
  for (int y = 0; y < height; ++y) {
    const uint8_t* __restrict s0 = src.data + src.stride * static_cast<size_t>(y * ky);
    for (int i = 0; i < span; ++i) cols[i] = s0[i];
    for (int k = 1; k < ky; ++k) {
      const uint8_t* __restrict s = src.data + src.stride * static_cast<size_t>(y * ky + k);
      for (int i = 0; i < span; ++i) cols[i] = static_cast<Acc>(cols[i] + s[i]);
    }
    uint8_t* __restrict d = dst + static_cast<size_t>(row) * static_cast<size_t>(y);
    for (int x = 0; x < width; ++x) {
      const Acc* c = cols + x * kx * 3;
      uint32_t r = 0, g = 0, b = 0;
      for (int j = 0; j < kx; ++j) r += c[3 * j], g += c[3 * j + 1], b += c[3 * j + 2];
      if (kx == 2 && ky == 2) {
        d[3 * x] = static_cast<uint8_t>((r + 2) >> 2), d[3 * x + 1] = static_cast<uint8_t>((g + 2) >> 2),
        d[3 * x + 2] = static_cast<uint8_t>((b + 2) >> 2);
      } else {
        d[3 * x] = round_u8(static_cast<float>(r) * scale), d[3 * x + 1] = round_u8(static_cast<float>(g) * scale),
        d[3 * x + 2] = round_u8(static_cast<float>(b) * scale);
      }
    }
  }
}

static void area_fast(const ImageView& src, uint8_t* dst, int width, int height, int kx, int ky) {
  if (ky <= 257) area_fast_rows<uint16_t>(src, dst, width, height, kx, ky);  // 257 * 255 fits 16 bits
  else area_fast_rows<uint32_t>(src, dst, width, height, kx, ky);
}

struct Tap {
  int di, si;
  float alpha;
};

// OpenCV's computeResizeAreaTab: each destination cell's source pixels and their float weights.
static std::vector<Tap> area_tab(int ssize, int dsize, int cn, double scale) {
  std::vector<Tap> tab;
  for (int dx = 0; dx < dsize; ++dx) {
    double fsx1 = dx * scale;
    double fsx2 = fsx1 + scale;
    double cell = std::min(scale, ssize - fsx1);
    int sx1 = static_cast<int>(std::ceil(fsx1)), sx2 = static_cast<int>(std::floor(fsx2));
    sx2 = std::min(sx2, ssize - 1);
    sx1 = std::min(sx1, sx2);
    if (sx1 - fsx1 > 1e-3) tab.push_back({dx * cn, (sx1 - 1) * cn, static_cast<float>((sx1 - fsx1) / cell)});
    for (int sx = sx1; sx < sx2; ++sx) tab.push_back({dx * cn, sx * cn, static_cast<float>(1.0 / cell)});
    if (fsx2 - sx2 > 1e-3)
      tab.push_back({dx * cn, sx2 * cn, static_cast<float>(std::min(std::min(fsx2 - sx2, 1.), cell) / cell)});
  }
  return tab;
}

// INTER_AREA, fractional factors: float accumulation in OpenCV's exact order (per source row a
// horizontal pass into buf, then rows weighted into sum, a destination row flushed on change).
static void area_general(const ImageView& src, uint8_t* dst, int width, int height, double scale_x, double scale_y) {
  const std::vector<Tap> xtab = area_tab(src.width, width, 3, scale_x);
  const std::vector<Tap> ytab = area_tab(src.height, height, 1, scale_y);
  const size_t row = static_cast<size_t>(width) * 3;
  std::vector<float> buf(row), sum(row, 0.f);
  int prev_dy = ytab.empty() ? 0 : ytab[0].di;
  for (const Tap& yt : ytab) {
    const float beta = yt.alpha;
    const uint8_t* s = src.data + src.stride * static_cast<size_t>(yt.si);
    std::fill(buf.begin(), buf.end(), 0.f);
    for (const Tap& t : xtab) {
      const float a = t.alpha;
      float t0 = buf[static_cast<size_t>(t.di)] + static_cast<float>(s[t.si]) * a;
      float t1 = buf[static_cast<size_t>(t.di) + 1] + static_cast<float>(s[t.si + 1]) * a;
      float t2 = buf[static_cast<size_t>(t.di) + 2] + static_cast<float>(s[t.si + 2]) * a;
      buf[static_cast<size_t>(t.di)] = t0;
      buf[static_cast<size_t>(t.di) + 1] = t1;
      buf[static_cast<size_t>(t.di) + 2] = t2;
    }
    if (yt.di != prev_dy) {
      uint8_t* d = dst + row * static_cast<size_t>(prev_dy);
      for (size_t i = 0; i < row; ++i) {
        d[i] = round_u8(sum[i]);
        sum[i] = beta * buf[i];
      }
      prev_dy = yt.di;
    } else {
      for (size_t i = 0; i < row; ++i) sum[i] += beta * buf[i];
    }
  }
  uint8_t* d = dst + row * static_cast<size_t>(prev_dy);
  for (size_t i = 0; i < row; ++i) d[i] = round_u8(sum[i]);
}

void resize_area(const ImageView& src, uint8_t* dst, int width, int height) {
  if (src.width == width && src.height == height) return copy_rows(src, dst);
  const double scale_x = 1. / (static_cast<double>(width) / src.width);
  const double scale_y = 1. / (static_cast<double>(height) / src.height);
  const int ix = static_cast<int>(std::lrint(scale_x)), iy = static_cast<int>(std::lrint(scale_y));
  if (std::fabs(scale_x - ix) < DBL_EPSILON && std::fabs(scale_y - iy) < DBL_EPSILON)
    area_fast(src, dst, width, height, ix, iy);
  else
    area_general(src, dst, width, height, scale_x, scale_y);
}

// INTER_LINEAR for 8-bit images: 11-bit fixed-point weights; the vertical pass rounds like
// OpenCV's SIMD kernel, (((b0 * (S0 >> 4)) >> 16) + ((b1 * (S1 >> 4)) >> 16) + 2) >> 2, over the
// whole row: measured against cv2 5.0, no value is rounded like OpenCV 4's scalar tail
// ((S0 * b0 + S1 * b1 + 2^21) >> 22), which differs by one in some pixels.
void resize_linear(const ImageView& src, uint8_t* dst, int width, int height) {
  if (src.width == width && src.height == height) return copy_rows(src, dst);
  const int cn = 3, sw = src.width, sh = src.height;
  const double scale_x = 1. / (static_cast<double>(width) / sw), scale_y = 1. / (static_cast<double>(height) / sh);
  const int dw = width * cn;
  std::vector<int> xofs(static_cast<size_t>(dw));
  std::vector<short> ialpha(static_cast<size_t>(dw) * 2);
  int xmax = width;
  for (int dx = 0; dx < width; ++dx) {
    float fx = static_cast<float>((dx + 0.5) * scale_x - 0.5);
    int sx = static_cast<int>(std::floor(fx));
    fx -= static_cast<float>(sx);
    if (sx < 0) fx = 0, sx = 0;
    if (sx + 1 >= sw) {
      xmax = std::min(xmax, dx);
      if (sx >= sw - 1) fx = 0, sx = sw - 1;
    }
    short a0 = static_cast<short>(std::lrintf((1.f - fx) * 2048)), a1 = static_cast<short>(std::lrintf(fx * 2048));
    for (int k = 0; k < cn; ++k) {
      xofs[static_cast<size_t>(dx * cn + k)] = sx * cn + k;
      ialpha[static_cast<size_t>((dx * cn + k) * 2)] = a0;
      ialpha[static_cast<size_t>((dx * cn + k) * 2 + 1)] = a1;
    }
  }
  xmax *= cn;
  std::vector<int> r0(static_cast<size_t>(dw)), r1(static_cast<size_t>(dw));
  auto hresize = [&](int sy, std::vector<int>& out) {
    const uint8_t* s = src.data + src.stride * static_cast<size_t>(sy);
    for (int i = 0; i < dw; ++i) {
      int sx = xofs[static_cast<size_t>(i)];
      out[static_cast<size_t>(i)] = i < xmax ? s[sx] * ialpha[static_cast<size_t>(i) * 2] + s[sx + cn] * ialpha[static_cast<size_t>(i) * 2 + 1]
                                             : s[sx] * 2048;
    }
  };
  for (int dy = 0; dy < height; ++dy) {
    float fy = static_cast<float>((dy + 0.5) * scale_y - 0.5);
    int sy = static_cast<int>(std::floor(fy));
    fy -= static_cast<float>(sy);
    const int b0 = static_cast<short>(std::lrintf((1.f - fy) * 2048)), b1 = static_cast<short>(std::lrintf(fy * 2048));
    hresize(std::min(std::max(sy, 0), sh - 1), r0);
    hresize(std::min(std::max(sy + 1, 0), sh - 1), r1);
    uint8_t* d = dst + static_cast<size_t>(dw) * static_cast<size_t>(dy);
    for (int x = 0; x < dw; ++x) {
      const int s0 = std::min(std::max(r0[static_cast<size_t>(x)] >> 4, -32768), 32767);  // v_pack saturates
      const int s1 = std::min(std::max(r1[static_cast<size_t>(x)] >> 4, -32768), 32767);
      const int v = (static_cast<int16_t>(((b0 * s0) >> 16) + ((b1 * s1) >> 16)) + 2) >> 2;
      d[x] = static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
    }
  }
}

// edgeprune.images.resize_rgb's contract (see the module header).
void resize_rgb(const ImageView& src, uint8_t* dst, int width, int height) {
  const int H = src.height, W = src.width;
  if (H == height && W == width) return copy_rows(src, dst);
  if (H >= height && W >= width) {
    const int kx = std::max(1, W / (2 * width)), ky = std::max(1, H / (2 * height));
    if (kx > 1 || ky > 1) {  // integer-factor box average first: reads each pixel once
      const int w1 = W / kx, h1 = H / ky;
      std::vector<uint8_t> mid(static_cast<size_t>(w1) * static_cast<size_t>(h1) * 3);
      area_fast(src, mid.data(), w1, h1, kx, ky);
      return resize_area(ImageView{mid.data(), w1, h1, static_cast<size_t>(w1) * 3}, dst, width, height);
    }
    return resize_area(src, dst, width, height);
  }
  resize_linear(src, dst, width, height);
}

Normalizer::Normalizer(const double mean[3], const double std[3]) {
  for (int c = 0; c < 3; ++c) {  // float32 throughout, as numpy computes it
    const float s = static_cast<float>(std[c]), m = static_cast<float>(mean[c]);
    scale[c] = 1.0f / (255.0f * s);
    offset[c] = -m / s;
  }
}

void Normalizer::apply(const uint8_t* rgb, int width, int height, float* out) const {
  const size_t plane = static_cast<size_t>(width) * static_cast<size_t>(height);
  for (size_t i = 0; i < plane; ++i)
    for (int c = 0; c < 3; ++c) {
      float v = static_cast<float>(rgb[i * 3 + static_cast<size_t>(c)]) * scale[c];
      out[static_cast<size_t>(c) * plane + i] = v + offset[c];
    }
}

// numpy.argmax semantics: the first maximum; a NaN wins (numpy treats NaN as the maximum).
static inline int argmax_at(const float* logits, int classes, size_t plane, size_t i) {
  int best = 0;
  float bv = logits[i];
  if (std::isnan(bv)) return 0;
  for (int k = 1; k < classes; ++k) {
    float v = logits[static_cast<size_t>(k) * plane + i];
    if (std::isnan(v)) return k;
    if (v > bv) bv = v, best = k;
  }
  return best;
}

void argmax_labels(const float* logits, int classes, int h, int w, uint8_t* labels) {
  const size_t plane = static_cast<size_t>(h) * static_cast<size_t>(w);
  for (size_t i = 0; i < plane; ++i) labels[i] = static_cast<uint8_t>(argmax_at(logits, classes, plane, i));
}

struct Taps {
  std::vector<int> i0, i1;
  std::vector<float> w;
};

// _bilinear_taps: torch's align_corners=False sampling, computed in float64, weights in float32.
static Taps bilinear_taps(int n_in, int n_out) {
  Taps t;
  const double ratio = static_cast<double>(n_in) / n_out;
  for (int i = 0; i < n_out; ++i) {
    double src = (i + 0.5) * ratio - 0.5;
    if (src < 0) src = 0;
    int i0 = std::min(static_cast<int>(std::floor(src)), n_in - 1);
    t.i0.push_back(i0);
    t.i1.push_back(std::min(i0 + 1, n_in - 1));
    t.w.push_back(static_cast<float>(src - i0));
  }
  return t;
}

void upsample_argmax(const float* logits, int classes, int h, int w, uint8_t* labels, int height, int width) {
  const size_t plane = static_cast<size_t>(h) * static_cast<size_t>(w);
  const size_t K = static_cast<size_t>(classes);
  std::vector<uint8_t> low(plane);
  argmax_labels(logits, classes, h, w, low.data());
  const Taps tx = bilinear_taps(w, width), ty = bilinear_taps(h, height);
  std::vector<uint8_t> uniform(static_cast<size_t>(width));
  // Per mixed output column of the current source-row pair: its candidate classes and their
  // horizontally interpolated values on both source rows (the same for every output row of the pair).
  std::vector<int> mixed, ncand;
  std::vector<uint8_t> cand;
  std::vector<float> top, bottom;
  int prev0 = -1, prev1 = -1;
  for (int y = 0; y < height; ++y) {
    const int y0 = ty.i0[static_cast<size_t>(y)], y1 = ty.i1[static_cast<size_t>(y)];
    if (y0 != prev0 || y1 != prev1) {
      prev0 = y0, prev1 = y1;
      mixed.clear(), ncand.clear(), cand.clear(), top.clear(), bottom.clear();
      const size_t r0 = static_cast<size_t>(y0) * static_cast<size_t>(w), r1 = static_cast<size_t>(y1) * static_cast<size_t>(w);
      std::vector<uint8_t> cell;  // the candidates of the current source cell (x0, x1)
      bool cell_mixed = false, cell_nan = false;
      size_t cell_x0 = static_cast<size_t>(-1);
      for (int x = 0; x < width; ++x) {
        const size_t x0 = static_cast<size_t>(tx.i0[static_cast<size_t>(x)]), x1 = static_cast<size_t>(tx.i1[static_cast<size_t>(x)]);
        if (x0 != cell_x0) {  // a new source cell: uniform, or which classes can win in it
          cell_x0 = x0;
          const uint8_t l = low[r0 + x0];
          cell_mixed = !(low[r0 + x1] == l && low[r1 + x0] == l && low[r1 + x1] == l);
          cell.clear();
          if (cell_mixed) {
            // A class can win inside the cell only if its best corner reaches the best worst corner
            // of any class (every blend stays within its corners' range); the margin covers rounding.
            float best_min = -INFINITY;
            cell_nan = false;
            for (size_t k = 0; k < K; ++k) {
              const float* p = logits + k * plane;
              const float a = p[r0 + x0], b = p[r0 + x1], c = p[r1 + x0], d = p[r1 + x1];
              cell_nan = cell_nan || std::isnan(a) || std::isnan(b) || std::isnan(c) || std::isnan(d);
              best_min = std::max(best_min, std::min(std::min(a, b), std::min(c, d)));
            }
            const float bar = best_min - 1e-5f * std::fabs(best_min) - 1e-30f;
            for (size_t k = 0; k < K; ++k) {
              const float* p = logits + k * plane;
              const float a = p[r0 + x0], b = p[r0 + x1], c = p[r1 + x0], d = p[r1 + x1];
              if (cell_nan || std::max(std::max(a, b), std::max(c, d)) >= bar) cell.push_back(static_cast<uint8_t>(k));
            }
          }
        }
        if (!cell_mixed) {
          uniform[static_cast<size_t>(x)] = low[r0 + x0];
          continue;
        }
        mixed.push_back(x);
        const float wx = tx.w[static_cast<size_t>(x)], wx1 = 1.0f - wx;
        for (uint8_t k : cell) {
          const float* p = logits + static_cast<size_t>(k) * plane;
          float h0 = p[r0 + x0] * wx1;  // upsample_argmax's float32 order: horizontal pass first
          h0 = h0 + p[r0 + x1] * wx;
          float h1 = p[r1 + x0] * wx1;
          h1 = h1 + p[r1 + x1] * wx;
          cand.push_back(k);
          top.push_back(h0);
          bottom.push_back(h1);
        }
        ncand.push_back(static_cast<int>(cell.size()));
      }
    }
    uint8_t* out = labels + static_cast<size_t>(y) * static_cast<size_t>(width);
    std::memcpy(out, uniform.data(), static_cast<size_t>(width));
    const float wy = ty.w[static_cast<size_t>(y)], wy1 = 1.0f - wy;
    size_t j = 0;
    for (size_t m = 0; m < mixed.size(); ++m) {
      int best = -1;
      float bv = 0.f;
      for (int c = 0; c < ncand[m]; ++c, ++j) {
        float v = top[j] * wy1;
        v = v + bottom[j] * wy;
        if (best < 0) {
          best = cand[j], bv = v;
        } else if (!std::isnan(bv) && (std::isnan(v) || v > bv)) {  // numpy: the first NaN wins
          best = cand[j], bv = v;
        }
      }
      out[mixed[m]] = static_cast<uint8_t>(best);
    }
  }
}

}  // namespace edgeprune
