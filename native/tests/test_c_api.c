/* C99 tests of the ABI: statuses, NULL handling, the scheduler, and (when EDGEPRUNE_TEST_SET and
 * EDGEPRUNE_ORT_LIBRARY are set, as the Python test session does) a real engine set; with
 * EDGEPRUNE_TEST_OPENVINO_ENGINES (that set's `edgeprune build --backend openvino` folder) and
 * EDGEPRUNE_OPENVINO_LIBRARY, the OpenVINO backend's open and refusals. */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgeprune/edgeprune.h"

static int failures = 0;
#define CHECK(cond)                                                   \
  do {                                                                \
    if (!(cond)) {                                                    \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      failures++;                                                     \
    }                                                                 \
  } while (0)

/* Expects `s` to carry `code` and a one-line message containing `part`; frees it. */
static void expect(edgeprune_status* s, edgeprune_code code, const char* part) {
  const char* message = edgeprune_status_message(s);
  if (edgeprune_status_code(s) != code || !strstr(message, part) || strchr(message, '\n')) {
    fprintf(stderr, "expected code %d containing '%s', got %d: %s\n", (int)code, part, (int)edgeprune_status_code(s), message);
    failures++;
  }
  edgeprune_status_free(s);
}

static void test_basics(void) {
  edgeprune_runtime* rt = (edgeprune_runtime*)1;
  edgeprune_options o;
  edgeprune_frame f;
  edgeprune_result r;
  edgeprune_info info;
  CHECK(edgeprune_abi_version() == EDGEPRUNE_ABI_VERSION);
  CHECK(edgeprune_status_code(NULL) == EDGEPRUNE_OK);
  CHECK(strcmp(edgeprune_status_message(NULL), "ok") == 0);
  edgeprune_status_free(NULL);
  edgeprune_close(NULL);
  edgeprune_options_init(&o);
  CHECK(o.struct_size == sizeof o && o.verify == 1 && o.openvino_library == NULL);
  /* A caller built against the header before openvino_library was appended: still accepted. */
  o.struct_size = offsetof(edgeprune_options, openvino_library);
  expect(edgeprune_open("/nonexistent/set", &o, &rt), EDGEPRUNE_NOT_FOUND, "not an engine set directory");
  o.struct_size = offsetof(edgeprune_options, verify);
  expect(edgeprune_open("/nonexistent/set", &o, &rt), EDGEPRUNE_INVALID_ARGUMENT, "struct_size is wrong");
  o.struct_size = sizeof o;
  expect(edgeprune_open(NULL, &o, &rt), EDGEPRUNE_INVALID_ARGUMENT, "path is NULL");
  CHECK(rt == NULL);
  expect(edgeprune_open("/nonexistent/set", NULL, &rt), EDGEPRUNE_INVALID_ARGUMENT, "options is NULL");
  expect(edgeprune_open("/nonexistent/set", &o, NULL), EDGEPRUNE_INVALID_ARGUMENT, "out is NULL");
  expect(edgeprune_open("/nonexistent/set", &o, &rt), EDGEPRUNE_NOT_FOUND, "not an engine set directory");
  edgeprune_frame_init(&f);
  edgeprune_result_init(&r);
  expect(edgeprune_infer(NULL, &f, NULL, &r), EDGEPRUNE_INVALID_ARGUMENT, "runtime is NULL");
  edgeprune_info_init(&info);
  expect(edgeprune_get_info(NULL, &info), EDGEPRUNE_INVALID_ARGUMENT, "runtime is NULL");
  expect(edgeprune_reset_stream(NULL, 0), EDGEPRUNE_INVALID_ARGUMENT, "runtime is NULL");
}

static void test_policy(void) {
  const double budgets[3] = {1.0, 0.5, 0.25}, p50[3] = {10.0, 6.0, 3.0}, p95[3] = {12.0, 7.0, 3.5};
  edgeprune_policy* p = NULL;
  edgeprune_decision d;
  int i;
  d.struct_size = sizeof d;
  expect(edgeprune_policy_create("nope", 3, budgets, p50, p95, 10.0, NULL, &p), EDGEPRUNE_INVALID_ARGUMENT, "unknown policy");
  expect(edgeprune_policy_create("deadline", 3, budgets, p50, p95, 10.0, "alpha=2", &p), EDGEPRUNE_INVALID_ARGUMENT, "alpha");
  expect(edgeprune_policy_create("deadline", 3, budgets, p50, p95, 10.0, "colour=2", &p), EDGEPRUNE_INVALID_ARGUMENT, "colour");
  expect(edgeprune_policy_create("deadline", 3, budgets, p50, p95, -1.0, NULL, &p), EDGEPRUNE_INVALID_ARGUMENT, "target_ms");
  expect(edgeprune_policy_create("fixed", 3, budgets, p50, p95, 10.0, "index=3", &p), EDGEPRUNE_INVALID_ARGUMENT, "out of range");
  expect(edgeprune_policy_choose(NULL, 0, -1, 0, &d), EDGEPRUNE_INVALID_ARGUMENT, "policy is NULL");
  CHECK(edgeprune_policy_create("deadline", 3, budgets, p50, p95, 9.0, "hysteresis_frames=2", &p) == NULL);
  /* 9 ms with a 20 % prior margin: 10 * 1.2 > 9, 6 * 1.2 <= 9 -> the middle engine starts */
  CHECK(edgeprune_policy_choose(p, 0, -1, 0, &d) == NULL);
  CHECK(d.index == 1 && strcmp(d.reason, "start") == 0);
  /* a slowdown of 3x for three frames is a level shift: nothing fits, the fastest runs */
  for (i = 0; i < 3; i++) CHECK(edgeprune_policy_observe(p, 1, 18.0) == NULL);
  CHECK(edgeprune_policy_choose(p, 4, -1, 0, &d) == NULL);
  CHECK(d.index == 2 && strcmp(d.reason, "unreachable") == 0);
  expect(edgeprune_policy_observe(p, 7, 1.0), EDGEPRUNE_INVALID_ARGUMENT, "out of range");
  edgeprune_policy_free(p);
}

static void test_images(void) {
  unsigned char src[4 * 6 * 3], dst[2 * 3 * 3], labels[4 * 4];
  float logits[2 * 2 * 2] = {1, 1, 1, 1, 0, 0, 0, 2}; /* class 1 wins only at the bottom-right pixel */
  edgeprune_frame f;
  int i;
  for (i = 0; i < (int)sizeof src; i++) src[i] = (unsigned char)(i * 7);
  edgeprune_frame_init(&f);
  f.rgb = src, f.width = 6, f.height = 4;
  CHECK(edgeprune_resize_rgb(&f, dst, 3, 2) == NULL);
  /* 2x2 box average rounds half up: pixel (0,0) red = (0 + 21 + 126 + 147 + 2) >> 2 */
  CHECK(dst[0] == (0 + 21 + 126 + 147 + 2) / 4);
  f.stride = 5;
  expect(edgeprune_resize_rgb(&f, dst, 3, 2), EDGEPRUNE_INVALID_ARGUMENT, "stride");
  CHECK(edgeprune_upsample_argmax(logits, 2, 2, 2, labels, 4, 4) == NULL);
  CHECK(labels[0] == 0 && labels[15] == 1);
  expect(edgeprune_upsample_argmax(NULL, 2, 2, 2, labels, 4, 4), EDGEPRUNE_INVALID_ARGUMENT, "NULL");
}

static void test_set(const char* set, const char* ort) {
  edgeprune_options o;
  edgeprune_runtime* rt = NULL;
  edgeprune_info info;
  edgeprune_frame f;
  edgeprune_request q;
  edgeprune_result r;
  static unsigned char frame[90 * 70 * 3], labels[90 * 70];
  int i;
  edgeprune_options_init(&o);
  o.ort_library = FAKE_OLD_ORT;
  o.target_ms = 50;
  expect(edgeprune_open(set, &o, &rt), EDGEPRUNE_UNSUPPORTED, "older than required");
  o.ort_library = "/nonexistent/libonnxruntime.so.1";
  expect(edgeprune_open(set, &o, &rt), EDGEPRUNE_NOT_FOUND, "no such file");
  o.ort_library = ort;
  o.policy = "deadline";
  o.policy_args = "window=1";
  expect(edgeprune_open(set, &o, &rt), EDGEPRUNE_INVALID_ARGUMENT, "window >= 2");
  o.policy_args = NULL;
  CHECK(edgeprune_open(set, &o, &rt) == NULL && rt != NULL);
  if (!rt) return;
  edgeprune_info_init(&info);
  CHECK(edgeprune_get_info(rt, &info) == NULL && info.kind == EDGEPRUNE_ENGINE_SET && info.engines >= 1);
  for (i = 0; i < (int)sizeof frame; i++) frame[i] = (unsigned char)((i * 31) ^ (i >> 5));
  edgeprune_frame_init(&f);
  f.rgb = frame, f.width = 90, f.height = 70;
  edgeprune_request_init(&q);
  q.labels = EDGEPRUNE_LABELS_INPUT, q.labels_out = labels, q.labels_capacity = sizeof labels;
  edgeprune_result_init(&r);
  CHECK(edgeprune_infer(rt, &f, &q, &r) == NULL);
  CHECK(r.frame == 0 && r.labels_width == 90 && r.labels_height == 70 && r.engine_ms > 0 && r.total_ms >= r.engine_ms);
  CHECK(strcmp(r.provider, "cpu") == 0 && strcmp(r.reason, "start") == 0);
  for (i = 0; i < 90 * 70; i++) CHECK(labels[i] < info.classes);
  q.labels_capacity = 100;
  expect(edgeprune_infer(rt, &f, &q, &r), EDGEPRUNE_BUFFER_TOO_SMALL, "labels_out holds 100 bytes");
  q.labels_capacity = sizeof labels;
  f.stride = 100;
  expect(edgeprune_infer(rt, &f, &q, &r), EDGEPRUNE_INVALID_ARGUMENT, "stride 100 is smaller than 3 * width = 270");
  f.stride = 0, f.rgb = NULL;
  expect(edgeprune_infer(rt, &f, &q, &r), EDGEPRUNE_INVALID_ARGUMENT, "rgb is NULL");
  f.rgb = frame, f.width = 0;
  expect(edgeprune_infer(rt, &f, &q, &r), EDGEPRUNE_INVALID_ARGUMENT, "frame size 0x70");
  f.width = 90;
  CHECK(edgeprune_infer(rt, &f, &q, &r) == NULL && r.frame == 1); /* failed calls left no trace */
  edgeprune_close(rt);
}

/* Built OpenVINO engines: the library's refusals, then a frame. */
static void test_openvino(const char* set, const char* engines, const char* ort) {
  edgeprune_options o;
  edgeprune_runtime* rt = NULL;
  edgeprune_info info;
  edgeprune_frame f;
  edgeprune_result r;
  static unsigned char frame[64 * 48 * 3];
  edgeprune_options_init(&o);
  o.ort_library = ort;
  o.engines = engines;
  o.target_ms = 1000;
  o.openvino_library = "/nonexistent/libopenvino_c.so.2641";
  expect(edgeprune_open(set, &o, &rt), EDGEPRUNE_NOT_FOUND, "no such file (install the openvino package");
  o.openvino_library = FAKE_OLD_ORT; /* a shared library, but not OpenVINO's */
  expect(edgeprune_open(set, &o, &rt), EDGEPRUNE_UNSUPPORTED, "is not OpenVINO's C library");
  o.openvino_library = NULL; /* $EDGEPRUNE_OPENVINO_LIBRARY */
  CHECK(edgeprune_open(set, &o, &rt) == NULL && rt != NULL);
  if (!rt) return;
  edgeprune_info_init(&info);
  CHECK(edgeprune_get_info(rt, &info) == NULL && strcmp(info.backend, "openvino") == 0 &&
        strncmp(info.provider, "OpenVINO CPU ", 13) == 0);
  memset(frame, 90, sizeof frame);
  edgeprune_frame_init(&f);
  f.rgb = frame, f.width = 64, f.height = 48;
  edgeprune_result_init(&r);
  CHECK(edgeprune_infer(rt, &f, NULL, &r) == NULL && strcmp(r.provider, info.provider) == 0 && r.engine_ms > 0);
  edgeprune_close(rt);
}

int main(void) {
  const char* set = getenv("EDGEPRUNE_TEST_SET");
  const char* ort = getenv("EDGEPRUNE_ORT_LIBRARY");
  test_basics();
  test_policy();
  test_images();
  if (set && *set && ort && *ort) test_set(set, ort);
  else fprintf(stderr, "test_c_api: EDGEPRUNE_TEST_SET/EDGEPRUNE_ORT_LIBRARY unset; engine-set checks skipped\n");
  if (set && *set && ort && *ort && getenv("EDGEPRUNE_TEST_OPENVINO_ENGINES") && getenv("EDGEPRUNE_OPENVINO_LIBRARY"))
    test_openvino(set, getenv("EDGEPRUNE_TEST_OPENVINO_ENGINES"), ort);
  if (failures) fprintf(stderr, "test_c_api: %d failure(s)\n", failures);
  else printf("test_c_api: ok\n");
  return failures ? 1 : 0;
}
