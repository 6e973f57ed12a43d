// Pre- and post-processing, bit-exact with the Python side:
//  - resize_rgb: edgeprune.images.resize_rgb's contract (OpenCV INTER_AREA / INTER_LINEAR semantics,
//    re-implemented here: the library does not link OpenCV);
//  - normalize: edgeprune.evaluation.normalize (float32 x * scale + offset, NCHW);
//  - upsample_argmax: edgeprune.images.upsample_argmax (float32 bilinear, horizontal pass first).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace edgeprune {

struct ImageView {
  const uint8_t* data;
  int width, height;
  size_t stride;  // bytes per row
};

// dst: [height, width, 3] contiguous.
void resize_rgb(const ImageView& src, uint8_t* dst, int width, int height);

// The two OpenCV kernels the contract uses, exposed for tests and reuse.
void resize_area(const ImageView& src, uint8_t* dst, int width, int height);    // INTER_AREA, shrinking
void resize_linear(const ImageView& src, uint8_t* dst, int width, int height);  // INTER_LINEAR, 8-bit

struct Normalizer {
  float scale[3], offset[3];
  Normalizer(const double mean[3], const double std[3]);
  // rgb [h, w, 3] contiguous -> out [3, h, w]
  void apply(const uint8_t* rgb, int width, int height, float* out) const;
};

// logits [classes, h, w] -> labels [h, w] (first maximum, like numpy.argmax)
void argmax_labels(const float* logits, int classes, int h, int w, uint8_t* labels);
// logits [classes, h, w] -> labels [height, width]: bilinear (align_corners=False) then argmax. Cells
// whose four source pixels agree take that class directly (a convex combination keeps the order),
// so only cells on class boundaries are interpolated.
void upsample_argmax(const float* logits, int classes, int h, int w, uint8_t* labels, int height, int width);

// Per-thread working memory of the kernels: a frame's buffers (a few hundred kB at 1080p) are
// reused from call to call instead of allocated, which kept the allocator and, for blocks past
// malloc's mmap threshold, fresh-page faults in every frame. Kept for the thread's lifetime.
struct Scratch {
  std::vector<uint16_t> cols16, sums16;  // area resize: column and block sums
  std::vector<uint32_t> cols32;
  std::vector<float> buf, sum;           // fractional area resize: one row each
  std::vector<uint8_t> mid;              // resize_rgb's integer-factor stage
  std::vector<uint8_t> low, row, cand;   // upsample_argmax: model-size labels, a row template, candidates
  std::vector<float> top, bottom, value; // upsample_argmax: mixed cells' horizontal values, running best
  std::vector<int32_t> index;            // upsample_argmax: running best class
  std::vector<int> runs;                 // upsample_argmax: column runs sharing a source column
};
Scratch& scratch();
template <typename T>
T* grow(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}

}  // namespace edgeprune
