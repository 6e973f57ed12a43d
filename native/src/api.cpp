// The C ABI: every entry point catches everything, so no C++ exception crosses the boundary, and
// returns a heap status (NULL = ok) carrying a code and a one-line message.
#include <algorithm>
#include <cstddef>
#include <cstring>
#include <new>
#include <string>

#include "common.hpp"
#include "image.hpp"
#include "policy.hpp"
#include "runtime.hpp"

struct edgeprune_status {
  edgeprune_code code;
  std::string message;
};

struct edgeprune_runtime {
  std::unique_ptr<edgeprune::Runtime> impl;
};

struct edgeprune_policy {
  std::unique_ptr<edgeprune::Policy> impl;
};

namespace {

// A status that needs no allocation, for when allocating the real one fails.
edgeprune_status out_of_memory{EDGEPRUNE_INTERNAL, "out of memory"};

edgeprune_status* make_status(edgeprune_code code, const std::string& message) {
  try {
    return new edgeprune_status{code, message.substr(0, message.find('\n'))};
  } catch (...) {
    return &out_of_memory;
  }
}

template <typename F>
edgeprune_status* guarded(F body) {
  try {
    body();
    return nullptr;
  } catch (const edgeprune::Error& e) {
    return make_status(e.code(), e.what());
  } catch (const std::bad_alloc&) {
    return make_status(EDGEPRUNE_INTERNAL, "out of memory");
  } catch (const std::exception& e) {
    return make_status(EDGEPRUNE_INTERNAL, std::string("internal error: ") + e.what());
  } catch (...) {
    return make_status(EDGEPRUNE_INTERNAL, "internal error: unknown exception");
  }
}

void need(bool ok, const char* message) {
  if (!ok) edgeprune::fail(EDGEPRUNE_INVALID_ARGUMENT, message);
}

edgeprune::ImageView view_of(const edgeprune_frame* f, const char* who) {
  need(f != nullptr, "frame is NULL");
  need(f->struct_size >= sizeof(edgeprune_frame), "frame->struct_size is wrong; call edgeprune_frame_init");
  need(f->rgb != nullptr, "frame->rgb is NULL");
  need(f->width >= 1 && f->height >= 1 && f->width <= 65536 && f->height <= 65536, "frame size is not in 1..65536");
  const size_t row = static_cast<size_t>(f->width) * 3, stride = f->stride ? f->stride : row;
  if (stride < row) edgeprune::fail(EDGEPRUNE_INVALID_ARGUMENT, std::string(who) + ": frame stride is smaller than 3 * width");
  return edgeprune::ImageView{f->rgb, f->width, f->height, stride};
}

}  // namespace

extern "C" {

uint32_t edgeprune_abi_version(void) { return EDGEPRUNE_ABI_VERSION; }
const char* edgeprune_version(void) { return "0.1.0"; }

edgeprune_code edgeprune_status_code(const edgeprune_status* s) { return s ? s->code : EDGEPRUNE_OK; }
const char* edgeprune_status_message(const edgeprune_status* s) { return s ? s->message.c_str() : "ok"; }
void edgeprune_status_free(edgeprune_status* s) {
  if (s && s != &out_of_memory) delete s;
}

void edgeprune_options_init(edgeprune_options* o) {
  if (!o) return;
  std::memset(o, 0, sizeof *o);
  o->struct_size = sizeof *o;
  o->verify = 1;
}
void edgeprune_info_init(edgeprune_info* i) {
  if (!i) return;
  std::memset(i, 0, sizeof *i);
  i->struct_size = sizeof *i;
}
void edgeprune_frame_init(edgeprune_frame* f) {
  if (!f) return;
  std::memset(f, 0, sizeof *f);
  f->struct_size = sizeof *f;
}
void edgeprune_request_init(edgeprune_request* r) {
  if (!r) return;
  std::memset(r, 0, sizeof *r);
  r->struct_size = sizeof *r;
}
void edgeprune_result_init(edgeprune_result* r) {
  if (!r) return;
  std::memset(r, 0, sizeof *r);
  r->struct_size = sizeof *r;
}

edgeprune_status* edgeprune_open(const char* path, const edgeprune_options* options, edgeprune_runtime** out) {
  return guarded([&] {
    need(out != nullptr, "open: out is NULL");
    *out = nullptr;
    need(path != nullptr, "open: path is NULL");
    need(options != nullptr, "open: options is NULL; call edgeprune_options_init");
    // Fields appended to the struct are absent from callers built against an older header: the
    // struct up to `verify` must be there, the rest reads as zero (NULL) when struct_size stops short.
    need(options->struct_size >= offsetof(edgeprune_options, openvino_library) && options->struct_size <= (1u << 16),
         "open: options->struct_size is wrong; call edgeprune_options_init");
    edgeprune_options full;
    std::memset(&full, 0, sizeof full);
    std::memcpy(&full, options, std::min(options->struct_size, sizeof full));
    std::unique_ptr<edgeprune_runtime> rt(new edgeprune_runtime);
    rt->impl = edgeprune::Runtime::open(path, full);
    *out = rt.release();
  });
}

void edgeprune_close(edgeprune_runtime* runtime) {
  try {
    delete runtime;
  } catch (...) {  // destructors do not throw; this only keeps the promise of the header
  }
}

edgeprune_status* edgeprune_get_info(const edgeprune_runtime* runtime, edgeprune_info* info) {
  return guarded([&] {
    need(runtime != nullptr, "get_info: runtime is NULL");
    need(info != nullptr && info->struct_size >= sizeof(edgeprune_info), "get_info: info is NULL or its struct_size is wrong");
    edgeprune_info out;
    edgeprune_info_init(&out);
    runtime->impl->info(&out);
    std::memcpy(info, &out, sizeof out);
  });
}

edgeprune_status* edgeprune_get_engine(const edgeprune_runtime* runtime, int index, char* name, size_t capacity, double* budget) {
  return guarded([&] {
    need(runtime != nullptr, "get_engine: runtime is NULL");
    if (index < 0 || index >= runtime->impl->engines())
      edgeprune::fail(EDGEPRUNE_INVALID_ARGUMENT, "get_engine: index " + std::to_string(index) + " out of range");
    const std::string n = runtime->impl->engine_name(index);
    if (name) {
      if (capacity < n.size() + 1) edgeprune::fail(EDGEPRUNE_BUFFER_TOO_SMALL, "get_engine: name buffer too small");
      std::memcpy(name, n.c_str(), n.size() + 1);
    }
    if (budget) *budget = runtime->impl->engine_budget(index);
  });
}

edgeprune_status* edgeprune_infer(edgeprune_runtime* runtime, const edgeprune_frame* frame, const edgeprune_request* request,
                                  edgeprune_result* result) {
  return guarded([&] {
    need(runtime != nullptr, "infer: runtime is NULL");
    runtime->impl->infer(frame, request, result);
  });
}

edgeprune_status* edgeprune_reset_stream(edgeprune_runtime* runtime, uint64_t stream) {
  return guarded([&] {
    need(runtime != nullptr, "reset_stream: runtime is NULL");
    runtime->impl->reset_stream(stream);
  });
}

edgeprune_status* edgeprune_policy_create(const char* name, int count, const double* budgets, const double* p50,
                                          const double* p95, double target_ms, const char* args, edgeprune_policy** out) {
  return guarded([&] {
    need(out != nullptr, "policy_create: out is NULL");
    *out = nullptr;
    need(name != nullptr, "policy_create: name is NULL");
    need(count >= 0 && (count == 0 || (budgets && p50 && p95)), "policy_create: budgets, p50_ms and p95_ms must hold count values");
    std::vector<edgeprune::Profile> profiles;
    for (int i = 0; i < count; ++i) profiles.push_back({"engine" + std::to_string(i), budgets[i], p50[i], p95[i]});
    std::unique_ptr<edgeprune_policy> p(new edgeprune_policy);
    p->impl = edgeprune::make_policy(name, profiles, target_ms, args ? args : "");
    *out = p.release();
  });
}

edgeprune_status* edgeprune_policy_choose(edgeprune_policy* policy, int64_t frame, double content, double deadline_ms,
                                          edgeprune_decision* out) {
  return guarded([&] {
    need(policy != nullptr, "policy_choose: policy is NULL");
    need(out != nullptr && out->struct_size >= sizeof(edgeprune_decision), "policy_choose: out is NULL or its struct_size is wrong");
    edgeprune::FrameContext ctx{frame, content >= 0, content, deadline_ms > 0, deadline_ms};
    edgeprune::Decision d = policy->impl->choose(ctx);
    out->index = d.index;
    out->budget = d.budget;
    out->predicted_ms = d.predicted_ms;
    edgeprune::copy_field(out->reason, d.reason);
  });
}

edgeprune_status* edgeprune_policy_observe(edgeprune_policy* policy, int index, double latency_ms) {
  return guarded([&] {
    need(policy != nullptr, "policy_observe: policy is NULL");
    if (index < 0 || index >= static_cast<int>(policy->impl->profiles().size()))
      edgeprune::fail(EDGEPRUNE_INVALID_ARGUMENT, "policy_observe: index " + std::to_string(index) + " out of range");
    policy->impl->observe(index, latency_ms);
  });
}

void edgeprune_policy_free(edgeprune_policy* policy) { delete policy; }

edgeprune_status* edgeprune_resize_rgb(const edgeprune_frame* src, uint8_t* dst, int width, int height) {
  return guarded([&] {
    edgeprune::ImageView v = view_of(src, "resize_rgb");
    need(dst != nullptr, "resize_rgb: dst is NULL");
    need(width >= 1 && height >= 1 && width <= 65536 && height <= 65536, "resize_rgb: target size is not in 1..65536");
    edgeprune::resize_rgb(v, dst, width, height);
  });
}

edgeprune_status* edgeprune_upsample_argmax(const float* logits, int classes, int h, int w, uint8_t* labels, int height, int width) {
  return guarded([&] {
    need(logits != nullptr && labels != nullptr, "upsample_argmax: logits or labels is NULL");
    need(classes >= 1 && classes <= 256, "upsample_argmax: classes must be in 1..256 (8-bit labels)");
    need(h >= 1 && w >= 1 && height >= 1 && width >= 1, "upsample_argmax: sizes must be >= 1");
    edgeprune::upsample_argmax(logits, classes, h, w, labels, height, width);
  });
}

edgeprune_status* edgeprune_thumbnail(const edgeprune_frame* frame, uint8_t out[1024]) {
  return guarded([&] {
    edgeprune::ImageView v = view_of(frame, "thumbnail");
    need(out != nullptr, "thumbnail: out is NULL");
    edgeprune::downscale_gray(v.data, v.width, v.height, v.stride, out);
  });
}

double edgeprune_frame_change(const uint8_t* previous, const uint8_t* current) {
  return current ? edgeprune::frame_change(previous, current) : -1.0;
}

double edgeprune_frame_complexity(const uint8_t* thumbnail) {
  return thumbnail ? edgeprune::frame_complexity(thumbnail) : -1.0;
}

}  // extern "C"
