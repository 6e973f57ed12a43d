/* edgeprune embedded runtime: C ABI (C99-clean; the library is C++17 inside).
 *
 * Runs what `edgeprune export --budgets` (an engine set), `edgeprune export --temporal` (a temporal
 * artifact) and `edgeprune build SET` (a built-engines folder) write, one frame at a time, choosing
 * the engine per frame with the same policies as the Python package `edgeprune.runtime`.
 *
 * Conventions:
 *  - Every fallible call returns an edgeprune_status*: NULL means success; otherwise it carries a
 *    code and a one-line message and must be freed with edgeprune_status_free. No C++ exception ever
 *    leaves the library; a failed call changes nothing (no partial state).
 *  - Option and result structs begin with struct_size: set it with the *_init functions (or to
 *    sizeof) so a newer library can tell which fields an older caller knows.
 *  - Handles are opaque. edgeprune_infer may be called from several threads at once on one runtime;
 *    edgeprune_close must come after every other call on that runtime has returned.
 */
#ifndef EDGEPRUNE_EDGEPRUNE_H
#define EDGEPRUNE_EDGEPRUNE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define EDGEPRUNE_API __declspec(dllexport)
#else
#define EDGEPRUNE_API __attribute__((visibility("default")))
#endif

/* Bumped when a struct or a function changes incompatibly; appending fields to a struct is not. */
#define EDGEPRUNE_ABI_VERSION 1

typedef enum edgeprune_code {
  EDGEPRUNE_OK = 0,
  EDGEPRUNE_INVALID_ARGUMENT = 1, /* NULL handle or buffer, bad size, stride, option value */
  EDGEPRUNE_NOT_FOUND = 2,        /* a missing folder or file */
  EDGEPRUNE_CORRUPT = 3,          /* unreadable, malformed or foreign manifest; changed or truncated model */
  EDGEPRUNE_UNSUPPORTED = 4,      /* a format, provider or backend this build or machine lacks */
  EDGEPRUNE_BACKEND = 5,          /* ONNX Runtime, TensorRT or OpenVINO failed (loading the library, a session, a run) */
  EDGEPRUNE_BUFFER_TOO_SMALL = 6, /* an output buffer cannot hold the result */
  EDGEPRUNE_INTERNAL = 7          /* a bug: please report it with the message */
} edgeprune_code;

typedef struct edgeprune_status edgeprune_status;
typedef struct edgeprune_runtime edgeprune_runtime;
typedef struct edgeprune_policy edgeprune_policy;

EDGEPRUNE_API uint32_t edgeprune_abi_version(void);
EDGEPRUNE_API const char* edgeprune_version(void);

/* A NULL status reads as EDGEPRUNE_OK / "ok". */
EDGEPRUNE_API edgeprune_code edgeprune_status_code(const edgeprune_status* status);
EDGEPRUNE_API const char* edgeprune_status_message(const edgeprune_status* status);
EDGEPRUNE_API void edgeprune_status_free(edgeprune_status* status);

/* ------------------------------------------------------------------------------------------------ */
/* Opening a runtime                                                                                  */

typedef struct edgeprune_options {
  size_t struct_size;
  /* ONNX Runtime shared library: NULL = $EDGEPRUNE_ORT_LIBRARY, else "libonnxruntime.so.1" then
   * "libonnxruntime.so" on the loader's search path. The onnxruntime wheel ships
   * onnxruntime/capi/libonnxruntime.so.<version>. */
  const char* ort_library;
  const char* provider;      /* "cpu" (default), "cuda", "tensorrt", "auto" (best available) */
  int threads;               /* intra-op threads per session; 0 = 2 */
  const char* policy;        /* "deadline" (default), "fixed", "content", "combined" */
  double target_ms;          /* the per-frame deadline the policy plans for; must be > 0 (engine sets) */
  /* Policy parameters as "name=value" pairs separated by commas, the names of edgeprune.runtime's
   * policies: fixed: index; deadline: alpha, margin_quantile, window, hysteresis_frames, safety_ms,
   * shift_frames; content: low, high; combined: both. NULL or "" = defaults. */
  const char* policy_args;
  const char* engines;       /* a built-engines folder of `edgeprune build SET` to run instead of the ONNX; NULL = none */
  int refresh_every;         /* temporal artifacts: refresh at least every N frames; 0 = 30 */
  double drift_threshold;    /* temporal artifacts: mean colour change that forces a refresh; 0 = 2.0 */
  int verify;                /* 1 (default) = check every model file's sha256 against its manifest */
  /* OpenVINO's C library, for built engines of backend openvino: NULL = $EDGEPRUNE_OPENVINO_LIBRARY,
   * else "libopenvino_c.so" on the loader's search path. The openvino wheel ships
   * openvino/libs/libopenvino_c.so.<version>. Appended to ABI version 1: a caller built against a
   * header without it (its smaller struct_size) gets NULL. */
  const char* openvino_library;
} edgeprune_options;

EDGEPRUNE_API void edgeprune_options_init(edgeprune_options* options);

/* Opens an engine set folder (set.json), a temporal artifact (manifest.json of kind
 * edgeprune-temporal) or, with options->engines, an engine set run on its built engines. */
EDGEPRUNE_API edgeprune_status* edgeprune_open(const char* path, const edgeprune_options* options,
                                               edgeprune_runtime** out);
/* Releases everything; NULL is a no-op. Call it once, after every other call has returned. */
EDGEPRUNE_API void edgeprune_close(edgeprune_runtime* runtime);

typedef enum edgeprune_kind { EDGEPRUNE_ENGINE_SET = 1, EDGEPRUNE_TEMPORAL = 2 } edgeprune_kind;

typedef struct edgeprune_info {
  size_t struct_size;
  int kind;          /* edgeprune_kind */
  int engines;       /* members (engine sets, largest budget first) or 2 graphs (temporal: refresh, update) */
  int width, height; /* the model's input size */
  int classes;       /* logits channels */
  char provider[32]; /* the provider the sessions were created with ("cpu", "cuda", "tensorrt", "trt"), or for
                      * OpenVINO engines "OpenVINO <device> <precision it runs>", e.g. "OpenVINO CPU f32" */
  char backend[32];  /* "onnxruntime", "tensorrt" or "openvino" */
} edgeprune_info;

EDGEPRUNE_API void edgeprune_info_init(edgeprune_info* info);
EDGEPRUNE_API edgeprune_status* edgeprune_get_info(const edgeprune_runtime* runtime, edgeprune_info* info);
/* Name (e.g. "b0.75") and budget of engine `index` (largest budget first). */
EDGEPRUNE_API edgeprune_status* edgeprune_get_engine(const edgeprune_runtime* runtime, int index,
                                                     char* name, size_t name_capacity, double* budget);

/* ------------------------------------------------------------------------------------------------ */
/* One frame                                                                                           */

typedef enum edgeprune_labels_mode {
  EDGEPRUNE_LABELS_NONE = 0,
  EDGEPRUNE_LABELS_INPUT = 1, /* labels at the frame's size: bilinear upsampling of the logits, then argmax */
  EDGEPRUNE_LABELS_MODEL = 2  /* labels at the model's input size: argmax of the logits */
} edgeprune_labels_mode;

typedef struct edgeprune_frame {
  size_t struct_size;
  const uint8_t* rgb; /* interleaved R, G, B bytes */
  int width, height;
  size_t stride;      /* bytes from one row to the next, >= 3 * width; 0 = 3 * width */
} edgeprune_frame;

typedef struct edgeprune_request {
  size_t struct_size;
  uint64_t stream;       /* camera id: change signal and temporal caches are per stream */
  double deadline_ms;    /* this frame's deadline; <= 0 = the runtime's target_ms */
  int labels;            /* edgeprune_labels_mode */
  uint8_t* labels_out;   /* caller-owned, row-major; needed when labels != NONE */
  size_t labels_capacity;/* bytes */
  float* logits_out;     /* caller-owned [classes, height, width] at model size, or NULL */
  size_t logits_capacity;/* floats */
} edgeprune_request;

typedef struct edgeprune_result {
  size_t struct_size;
  int64_t frame;          /* runtime-wide frame counter (engine sets) or the stream's frame index (temporal) */
  int engine_index;
  char engine[32];        /* member name ("b0.75") or temporal graph ("refresh", "update") */
  double budget;          /* MACs ratio of the engine that ran (temporal: share of patches recomputed) */
  char provider[32];      /* the provider that actually ran the engine */
  double predicted_ms;    /* what the policy expected the engine to take */
  double content;         /* the change signal the policy saw, in [0, 1] */
  double pre_ms, engine_ms, post_ms, scheduler_ms, total_ms;
  int deadline_met;       /* total_ms <= the frame's deadline */
  char reason[64];        /* the policy's reason, or the temporal refresh reason ("" for an update) */
  int labels_width, labels_height;
  int refreshed;          /* temporal: 1 when the refresh graph ran */
  double drift;           /* temporal: mean change of the patches left stale */
} edgeprune_result;

EDGEPRUNE_API void edgeprune_frame_init(edgeprune_frame* frame);
EDGEPRUNE_API void edgeprune_request_init(edgeprune_request* request);
EDGEPRUNE_API void edgeprune_result_init(edgeprune_result* result);

EDGEPRUNE_API edgeprune_status* edgeprune_infer(edgeprune_runtime* runtime, const edgeprune_frame* frame,
                                                const edgeprune_request* request, edgeprune_result* result);
/* Temporal artifacts: forget a stream's caches (its next frame refreshes). */
EDGEPRUNE_API edgeprune_status* edgeprune_reset_stream(edgeprune_runtime* runtime, uint64_t stream);

/* ------------------------------------------------------------------------------------------------ */
/* The scheduler alone (same policies as edgeprune.runtime.policies), e.g. to replay a latency trace */

typedef struct edgeprune_decision {
  size_t struct_size;
  int index;
  double budget;
  double predicted_ms;
  char reason[32];
} edgeprune_decision;

/* Profiles: `count` engines, budgets strictly decreasing, 0 < p50 <= p95. */
EDGEPRUNE_API edgeprune_status* edgeprune_policy_create(const char* name, int count, const double* budgets,
                                                        const double* p50_ms, const double* p95_ms,
                                                        double target_ms, const char* policy_args,
                                                        edgeprune_policy** out);
/* content < 0 = no signal (Python's None); deadline_ms <= 0 = the policy's target. */
EDGEPRUNE_API edgeprune_status* edgeprune_policy_choose(edgeprune_policy* policy, int64_t frame, double content,
                                                        double deadline_ms, edgeprune_decision* out);
EDGEPRUNE_API edgeprune_status* edgeprune_policy_observe(edgeprune_policy* policy, int index, double latency_ms);
EDGEPRUNE_API void edgeprune_policy_free(edgeprune_policy* policy);

/* ------------------------------------------------------------------------------------------------ */
/* Building blocks the runtime uses, exported so callers and tests can check them                     */

/* RGB8 resize of the pre-processing contract (area averaging when shrinking, bilinear otherwise). */
EDGEPRUNE_API edgeprune_status* edgeprune_resize_rgb(const edgeprune_frame* src, uint8_t* dst, int width, int height);
/* Logits [classes, h, w] -> labels [height, width]: bilinear (align_corners=False) then argmax. */
EDGEPRUNE_API edgeprune_status* edgeprune_upsample_argmax(const float* logits, int classes, int h, int w,
                                                          uint8_t* labels, int height, int width);
/* 32x32 luma thumbnail for change detection, and the content signals computed from thumbnails. */
EDGEPRUNE_API edgeprune_status* edgeprune_thumbnail(const edgeprune_frame* frame, uint8_t out[1024]);
EDGEPRUNE_API double edgeprune_frame_change(const uint8_t* previous_or_null, const uint8_t* current);
EDGEPRUNE_API double edgeprune_frame_complexity(const uint8_t* thumbnail);

#ifdef __cplusplus
}
#endif

#endif /* EDGEPRUNE_EDGEPRUNE_H */
