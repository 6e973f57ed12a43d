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

// round_u8 without the libm call, so that whole rows vectorise. For |v| < 2^22, (v + 2^23) - 2^23
// is v rounded to an integer in the current rounding mode (the float sum's unit in the last place
// is 1), exactly what lrintf does; the clamp is then done on the integer. The callers' values are
// weighted averages of bytes (0 <= v <= 255 plus rounding), never NaN. Needs float arithmetic in
// float (no x87 excess precision), else it falls back to lrintf.
static inline uint8_t round_u8_row(float v) {
#if defined(FLT_EVAL_METHOD) && FLT_EVAL_METHOD == 0
  const int r = static_cast<int>((v + 8388608.f) - 8388608.f);
  return static_cast<uint8_t>(r < 0 ? 0 : (r > 255 ? 255 : r));
#else
  return round_u8(v);
#endif
}

Scratch& scratch() {
  static thread_local Scratch s;
  return s;
}

static void copy_rows(const ImageView& src, uint8_t* dst) {
  const size_t row = static_cast<size_t>(src.width) * 3;
  for (int y = 0; y < src.height; ++y) std::memcpy(dst + row * static_cast<size_t>(y), src.data + src.stride * static_cast<size_t>(y), row);
}

// INTER_AREA, integer factors (OpenCV's "fast area" path): 2x2 rounds (sum + 2) >> 2 like its
// SIMD kernel; other factors round float(sum) * (1.f / area) half to even like its scalar loop.
// Any block whose sums need 32 bits (more than 257 pixels) takes this plain loop.
static void area_fast_wide(const ImageView& src, uint8_t* dst, int width, int height, int kx, int ky) {
  const int row = width * 3, span = kx * row;
  uint32_t* __restrict cols = grow(scratch().cols32, static_cast<size_t>(span));
  const float scale = 1.f / static_cast<float>(kx * ky);
  for (int y = 0; y < height; ++y) {
    for (int i = 0; i < span; ++i) cols[i] = 0;
    for (int k = 0; k < ky; ++k) {
      const uint8_t* __restrict s = src.data + src.stride * static_cast<size_t>(y * ky + k);
      for (int i = 0; i < span; ++i) cols[i] += s[i];
    }
    uint8_t* d = dst + static_cast<size_t>(row) * static_cast<size_t>(y);
    for (int x = 0; x < width; ++x) {
      const uint32_t* c = cols + x * kx * 3;
      uint32_t r = 0, g = 0, b = 0;
      for (int j = 0; j < kx; ++j) r += c[3 * j], g += c[3 * j + 1], b += c[3 * j + 2];
      d[3 * x] = round_u8(static_cast<float>(r) * scale), d[3 * x + 1] = round_u8(static_cast<float>(g) * scale),
      d[3 * x + 2] = round_u8(static_cast<float>(b) * scale);
    }
  }
}

// Column sums of `rows` source rows over n bytes, four rows per pass where it can (each pass reads
// and writes the sums once). Integer adds, so every instruction set gives the same sums: on x86-64
// an AVX2 clone is chosen at load time where the CPU has it (twice the bytes per instruction).
// Not in sanitizer builds: a clone is picked by an ifunc resolver during relocation, before the
// sanitizer runtime is initialised, and ThreadSanitizer crashes there.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && !defined(EDGEPRUNE_NO_IFUNC)
__attribute__((target_clones("avx2", "default")))
#endif
static void column_sums(const uint8_t* s, size_t stride, int rows, int n, uint16_t* __restrict cols) {
  const uint8_t* __restrict a = s;
  int k;
  if (rows >= 4) {
    const uint8_t* __restrict b = a + stride;
    const uint8_t* __restrict c = b + stride;
    const uint8_t* __restrict d = c + stride;
    for (int i = 0; i < n; ++i) cols[i] = static_cast<uint16_t>(a[i] + b[i] + c[i] + d[i]);
    k = 4;
  } else if (rows >= 2) {
    const uint8_t* __restrict b = a + stride;
    for (int i = 0; i < n; ++i) cols[i] = static_cast<uint16_t>(a[i] + b[i]);
    k = 2;
  } else {
    for (int i = 0; i < n; ++i) cols[i] = a[i];
    k = 1;
  }
  for (; k + 4 <= rows; k += 4) {
    const uint8_t* __restrict p = s + stride * static_cast<size_t>(k);
    const uint8_t* __restrict q = p + stride;
    const uint8_t* __restrict r = q + stride;
    const uint8_t* __restrict t = r + stride;
    for (int i = 0; i < n; ++i) cols[i] = static_cast<uint16_t>(cols[i] + p[i] + q[i] + r[i] + t[i]);
  }
  for (; k < rows; ++k) {
    const uint8_t* __restrict p = s + stride * static_cast<size_t>(k);
    for (int i = 0; i < n; ++i) cols[i] = static_cast<uint16_t>(cols[i] + p[i]);
  }
}

// The same for blocks of at most 257 pixels (every sum fits 16 bits), the per-frame case (1080p to
// 128x128 averages 7x4 blocks). Each source row is read once: the block's rows are added as 16-bit
// column sums (column_sums), the columns of a block then summed four 16-bit
// lanes at a time in one 64-bit word (R, G, B and the next pixel's R: no lane can carry into another,
// so the word sum is the three sums, on either byte order), and the row rounded in one vectorised pass.
static void area_fast_narrow(const ImageView& src, uint8_t* dst, int width, int height, int kx, int ky) {
  const int row = width * 3, span = kx * row;
  Scratch& sc = scratch();
  // +4 lanes: the last pixel's 64-bit read covers one lane past the span (zeroed, never used).
  uint16_t* __restrict cols = grow(sc.cols16, static_cast<size_t>(span) + 4);
  uint16_t* __restrict sums = grow(sc.sums16, static_cast<size_t>(row) + 4);
  std::memset(cols + span, 0, 4 * sizeof(uint16_t));
  const bool two = kx == 2 && ky == 2;
  const float scale = 1.f / static_cast<float>(kx * ky);
  for (int y = 0; y < height; ++y) {
    column_sums(src.data + src.stride * static_cast<size_t>(y * ky), src.stride, ky, span, cols);
    for (int x = 0; x < width; ++x) {
      const uint16_t* c = cols + x * kx * 3;
      uint64_t acc = 0;
      for (int j = 0; j < kx; ++j) {
        uint64_t v;
        std::memcpy(&v, c + 3 * j, sizeof v);
        acc += v;
      }
      std::memcpy(sums + 3 * x, &acc, sizeof acc);  // the 4th lane is overwritten by the next pixel
    }
    uint8_t* __restrict d = dst + static_cast<size_t>(row) * static_cast<size_t>(y);
    if (two) {
      for (int i = 0; i < row; ++i) d[i] = static_cast<uint8_t>((sums[i] + 2) >> 2);
    } else {
      for (int i = 0; i < row; ++i) d[i] = round_u8_row(static_cast<float>(sums[i]) * scale);
    }
  }
}

static void area_fast(const ImageView& src, uint8_t* dst, int width, int height, int kx, int ky) {
  if (kx * ky <= 257) area_fast_narrow(src, dst, width, height, kx, ky);  // 257 * 255 fits 16 bits
  else area_fast_wide(src, dst, width, height, kx, ky);
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
// The horizontal pass keeps each destination pixel's running sum in registers (its taps are
// consecutive in xtab; 0 + first product is that product, as buf's zero start gives), and is
// skipped when consecutive ytab entries read the same source row (the same floats again).
static void area_general(const ImageView& src, uint8_t* dst, int width, int height, double scale_x, double scale_y) {
  const std::vector<Tap> xtab = area_tab(src.width, width, 3, scale_x);
  const std::vector<Tap> ytab = area_tab(src.height, height, 1, scale_y);
  const size_t row = static_cast<size_t>(width) * 3;
  Scratch& sc = scratch();
  float* __restrict buf = grow(sc.buf, row);
  float* __restrict sum = grow(sc.sum, row);
  std::fill(sum, sum + row, 0.f);
  const Tap* taps = xtab.data();
  const size_t ntaps = xtab.size();
  int prev_dy = ytab.empty() ? 0 : ytab[0].di, prev_si = -1;
  for (const Tap& yt : ytab) {
    const float beta = yt.alpha;
    if (yt.si != prev_si) {
      prev_si = yt.si;
      const uint8_t* s = src.data + src.stride * static_cast<size_t>(yt.si);
      std::fill(buf, buf + row, 0.f);  // destination pixels without taps stay 0, as in OpenCV
      for (size_t t = 0; t < ntaps;) {
        const int di = taps[t].di;
        float t0 = 0.f, t1 = 0.f, t2 = 0.f;
        for (; t < ntaps && taps[t].di == di; ++t) {
          const float a = taps[t].alpha;
          const uint8_t* p = s + taps[t].si;
          t0 = t0 + static_cast<float>(p[0]) * a;
          t1 = t1 + static_cast<float>(p[1]) * a;
          t2 = t2 + static_cast<float>(p[2]) * a;
        }
        buf[di] = t0, buf[di + 1] = t1, buf[di + 2] = t2;
      }
    }
    if (yt.di != prev_dy) {
      uint8_t* __restrict d = dst + row * static_cast<size_t>(prev_dy);
      for (size_t i = 0; i < row; ++i) {
        d[i] = round_u8_row(sum[i]);
        sum[i] = beta * buf[i];
      }
      prev_dy = yt.di;
    } else {
      for (size_t i = 0; i < row; ++i) sum[i] += beta * buf[i];
    }
  }
  uint8_t* __restrict d = dst + row * static_cast<size_t>(prev_dy);
  for (size_t i = 0; i < row; ++i) d[i] = round_u8_row(sum[i]);
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

// edgeprune.imaging.images.resize_rgb's contract (see the module header).
void resize_rgb(const ImageView& src, uint8_t* dst, int width, int height) {
  const int H = src.height, W = src.width;
  if (H == height && W == width) return copy_rows(src, dst);
  if (H >= height && W >= width) {
    const int kx = std::max(1, W / (2 * width)), ky = std::max(1, H / (2 * height));
    if (kx > 1 || ky > 1) {  // integer-factor box average first: reads each pixel once
      const int w1 = W / kx, h1 = H / ky;
      uint8_t* mid = grow(scratch().mid, static_cast<size_t>(w1) * static_cast<size_t>(h1) * 3);
      area_fast(src, mid, w1, h1, kx, ky);
      return resize_area(ImageView{mid, w1, h1, static_cast<size_t>(w1) * 3}, dst, width, height);
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
  // One pass, three planes: the de-interleaving loads vectorise; same float32 ops as before.
  float* __restrict r = out;
  float* __restrict g = out + plane;
  float* __restrict b = out + 2 * plane;
  const uint8_t* __restrict p = rgb;
  const float s0 = scale[0], s1 = scale[1], s2 = scale[2], o0 = offset[0], o1 = offset[1], o2 = offset[2];
  for (size_t i = 0; i < plane; ++i) {
    r[i] = static_cast<float>(p[3 * i]) * s0 + o0;
    g[i] = static_cast<float>(p[3 * i + 1]) * s1 + o1;
    b[i] = static_cast<float>(p[3 * i + 2]) * s2 + o2;
  }
}

}  // namespace edgeprune
