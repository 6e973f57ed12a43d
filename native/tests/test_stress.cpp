// Leak and race workload for the sanitizer builds (native/ci_sanitizers.sh) and a quick ctest:
//   test_stress                 quick: 40 frames, 5 open/close cycles, 4 threads x 4 streams x 5 frames
//   test_stress leaks           1000 frames and 100 open/close cycles (run under LeakSanitizer)
//   test_stress races           4 threads x 4 streams on one runtime, 20 frames each (ThreadSanitizer)
// Needs EDGEPRUNE_TEST_SET (an engine set or a temporal artifact) and EDGEPRUNE_ORT_LIBRARY; exits 77
// (ctest's "skipped") without them. With EDGEPRUNE_TEST_ENGINES (a built-engines folder of that set)
// the set runs on those engines: OpenVINO ones load $EDGEPRUNE_OPENVINO_LIBRARY.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "edgeprune/edgeprune.h"

static int failures = 0;

static bool ok(edgeprune_status* s, const char* what) {
  if (!s) return true;
  std::fprintf(stderr, "%s: %s\n", what, edgeprune_status_message(s));
  edgeprune_status_free(s);
  ++failures;
  return false;
}

static edgeprune_runtime* open_runtime(const char* set, const char* ort) {
  edgeprune_options o;
  edgeprune_options_init(&o);
  o.ort_library = ort;
  const char* engines = std::getenv("EDGEPRUNE_TEST_ENGINES");
  o.engines = engines && *engines ? engines : nullptr;
  o.target_ms = 30;
  o.threads = 1;
  edgeprune_runtime* rt = nullptr;
  ok(edgeprune_open(set, &o, &rt), "open");
  return rt;
}

// A moving gradient, different per stream, at an odd size so every pre/post path runs.
static std::vector<uint8_t> frame(int w, int h, int t, int stream) {
  std::vector<uint8_t> f(static_cast<size_t>(w) * h * 3);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int c = 0; c < 3; ++c)
        f[(static_cast<size_t>(y) * w + x) * 3 + c] = static_cast<uint8_t>(x * (c + 1) + y * 2 + t * 3 + stream * 50);
  return f;
}

static void run_frames(edgeprune_runtime* rt, int frames, int stream, int labels) {
  const int w = 97, h = 61;
  std::vector<uint8_t> out(static_cast<size_t>(w) * h + 512 * 512);  // input- or model-size labels
  for (int t = 0; t < frames; ++t) {
    std::vector<uint8_t> f = frame(w, h, t, stream);
    edgeprune_frame fr;
    edgeprune_frame_init(&fr);
    fr.rgb = f.data(), fr.width = w, fr.height = h;
    edgeprune_request q;
    edgeprune_request_init(&q);
    q.stream = static_cast<uint64_t>(stream);
    q.labels = labels;
    q.labels_out = out.data();
    q.labels_capacity = out.size();
    edgeprune_result r;
    edgeprune_result_init(&r);
    if (!ok(edgeprune_infer(rt, &fr, &q, &r), "infer")) return;
  }
}

int main(int argc, char** argv) {
  const char* set = std::getenv("EDGEPRUNE_TEST_SET");
  const char* ort = std::getenv("EDGEPRUNE_ORT_LIBRARY");
  if (!set || !*set || !ort || !*ort) {
    std::fprintf(stderr, "test_stress: EDGEPRUNE_TEST_SET and EDGEPRUNE_ORT_LIBRARY must be set; skipped\n");
    return 77;
  }
  const std::string mode = argc > 1 ? argv[1] : "quick";
  const int frames = mode == "leaks" ? 1000 : 40, cycles = mode == "leaks" ? 100 : 5;
  const int per_thread = mode == "races" ? 20 : 5;
  if (mode != "races") {
    edgeprune_runtime* rt = open_runtime(set, ort);
    if (!rt) return 1;
    run_frames(rt, frames, 0, EDGEPRUNE_LABELS_INPUT);
    edgeprune_close(rt);
    for (int i = 0; i < cycles; ++i) {
      rt = open_runtime(set, ort);
      if (!rt) return 1;
      run_frames(rt, 1, i, i % 2 ? EDGEPRUNE_LABELS_MODEL : EDGEPRUNE_LABELS_NONE);
      edgeprune_close(rt);
    }
  }
  if (mode != "leaks") {  // 4 threads, each feeding 4 streams, on one runtime
    edgeprune_runtime* rt = open_runtime(set, ort);
    if (!rt) return 1;
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
      threads.emplace_back([rt, t, per_thread] {
        for (int i = 0; i < per_thread; ++i)
          for (int s = 0; s < 4; ++s) run_frames(rt, 1, t * 4 + s, EDGEPRUNE_LABELS_INPUT);
      });
    for (auto& th : threads) th.join();
    edgeprune_close(rt);
  }
  std::printf("test_stress %s: %s\n", mode.c_str(), failures ? "FAILED" : "ok");
  return failures ? 1 : 0;
}
