/* Locale independence: what a folder gives must not depend on the C locale of the process that
 * loads the library. TARGET (an engine set or a temporal artifact) is opened and run in the "C"
 * locale, then the process switches to LOCALE with setlocale(LC_ALL, LOCALE) (default de_DE.UTF-8,
 * whose decimal separator is a comma), opens TARGET again and must get the same engines, budgets,
 * reasons and labels, frame by frame. Manifests hold numbers such as 0.485 and policy parameters
 * such as alpha=0.25: a parser that reads them with the locale's strtod fails or misreads them.
 *
 *   EDGEPRUNE_ORT_LIBRARY=... test_locale TARGET [LOCALE [-v]]      (-v: print every frame)
 *
 * Exit status: 0 identical, 1 a difference or a failed call, 2 usage error or LOCALE not installed
 * (tests/native/test_native_locale.py builds it with localedef into a LOCPATH folder). Plain C99. */
#include <locale.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgeprune/edgeprune.h"

#define FRAMES 6
#define W 57
#define H 43
#define MAX_RUNS 8
#define MAX_LABELS (512 * 512)

typedef struct {
  char engine[64];
  char reason[128];
  double budget;
  unsigned char* labels; /* at the model's size */
  size_t count;
} frame_record;

typedef struct {
  const char* policy;
  char args[64];
  double drift_threshold;
} config;

static unsigned char pixels[W * H * 3];

/* A fixed textured background with a square that moves a few pixels per frame: a temporal artifact
 * refreshes on the first frame, then updates the patches that changed most (or refreshes when the
 * rest drifted more than the threshold). */
static void make_frame(int t) {
  int x, y, c;
  for (y = 0; y < H; y++)
    for (x = 0; x < W; x++)
      for (c = 0; c < 3; c++) {
        unsigned v = (unsigned)(x * (c + 7) ^ (y * 13 + c * 41)) * 2654435761u;
        int inside = x >= 3 * t && x < 3 * t + 12 && y >= 2 * t && y < 2 * t + 12;
        unsigned noise = (unsigned)(x * 7 + y * 3 + t * 5 + c) % 3; /* sensor noise: a small drift everywhere */
        pixels[(y * W + x) * 3 + c] = inside ? (unsigned char)(c == 0 ? 250 : 30) : (unsigned char)((v >> 24) / 2 + noise);
      }
}

static int report(edgeprune_status* s, const char* what, const char* locale) {
  if (!s) return 0;
  fprintf(stderr, "test_locale: %s in locale %s: %s\n", what, locale, edgeprune_status_message(s));
  edgeprune_status_free(s);
  return 1;
}

/* Opens target with cfg and runs FRAMES frames into rec; returns 0 on success. */
static int run(const char* target, const char* ort, const config* cfg, frame_record* rec, const char* locale, int* engines) {
  edgeprune_options o;
  edgeprune_runtime* rt = NULL;
  edgeprune_info info;
  edgeprune_frame f;
  edgeprune_request q;
  edgeprune_result r;
  int t, failed = 0;
  edgeprune_options_init(&o);
  o.ort_library = ort;
  o.threads = 1;
  o.target_ms = 1e6; /* every engine meets it: the choice does not depend on timing */
  o.policy = cfg->policy;
  o.policy_args = cfg->args[0] ? cfg->args : NULL;
  o.drift_threshold = cfg->drift_threshold;
  if (report(edgeprune_open(target, &o, &rt), "open", locale)) return 1;
  edgeprune_info_init(&info);
  if (report(edgeprune_get_info(rt, &info), "get_info", locale)) {
    edgeprune_close(rt);
    return 1;
  }
  if (engines) *engines = info.kind == EDGEPRUNE_ENGINE_SET ? info.engines : 0;
  for (t = 0; t < FRAMES && !failed; t++) {
    frame_record* out = &rec[t];
    make_frame(t);
    edgeprune_frame_init(&f);
    f.rgb = pixels, f.width = W, f.height = H;
    out->count = (size_t)info.width * (size_t)info.height;
    if (out->count > MAX_LABELS) {
      fprintf(stderr, "test_locale: model size %dx%d is too large for this test\n", info.width, info.height);
      failed = 1;
      break;
    }
    out->labels = (unsigned char*)calloc(out->count, 1);
    edgeprune_request_init(&q);
    q.labels = EDGEPRUNE_LABELS_MODEL, q.labels_out = out->labels, q.labels_capacity = out->count;
    edgeprune_result_init(&r);
    failed = report(edgeprune_infer(rt, &f, &q, &r), "infer", locale);
    strcpy(out->engine, r.engine);
    strcpy(out->reason, r.reason);
    out->budget = r.budget;
  }
  edgeprune_close(rt);
  return failed;
}

static int compare(const char* what, const frame_record* a, const frame_record* b) {
  int t, bad = 0;
  for (t = 0; t < FRAMES; t++) {
    if (strcmp(a[t].engine, b[t].engine) != 0 || a[t].budget != b[t].budget) {
      fprintf(stderr, "test_locale: %s frame %d: engine %s (%g) in C, %s (%g) after setlocale\n", what, t, a[t].engine,
              a[t].budget, b[t].engine, b[t].budget);
      bad = 1;
    }
    if (strcmp(a[t].reason, b[t].reason) != 0) {
      fprintf(stderr, "test_locale: %s frame %d: reason '%s' in C, '%s' after setlocale\n", what, t, a[t].reason, b[t].reason);
      bad = 1;
    }
    if (a[t].count != b[t].count || memcmp(a[t].labels, b[t].labels, a[t].count) != 0) {
      fprintf(stderr, "test_locale: %s frame %d: labels differ\n", what, t);
      bad = 1;
    }
  }
  return bad;
}

static void release(frame_record* rec) {
  int t;
  for (t = 0; t < FRAMES; t++) {
    free(rec[t].labels);
    rec[t].labels = NULL;
  }
}

int main(int argc, char** argv) {
  const char* target = argc > 1 ? argv[1] : getenv("EDGEPRUNE_TEST_SET");
  const char* locale = argc > 2 ? argv[2] : "de_DE.UTF-8";
  const char* ort = getenv("EDGEPRUNE_ORT_LIBRARY");
  const int verbose = argc > 3 && strcmp(argv[3], "-v") == 0;
  static frame_record in_c[MAX_RUNS][FRAMES], in_locale[MAX_RUNS][FRAMES];
  config configs[MAX_RUNS];
  int runs = 0, engines = 0, i, failed = 0;
  char what[96];
  if (!target || !*target || !ort || !*ort) {
    fprintf(stderr, "usage: EDGEPRUNE_ORT_LIBRARY=... test_locale TARGET [LOCALE [-v]]\n");
    return 2;
  }
  if (!setlocale(LC_ALL, "C")) return 2;

  /* In the C locale: a deadline policy with real-valued parameters, then every engine of a set. */
  memset(configs, 0, sizeof configs);
  configs[0].policy = "deadline";
  strcpy(configs[0].args, "alpha=0.25,margin_quantile=0.9,safety_ms=0.5");
  configs[0].drift_threshold = 0.001; /* temporal: "drift 0.04 > 0.001" reasons */
  runs = 1;
  if (run(target, ort, &configs[0], in_c[0], "C", &engines)) return 1;
  if (engines == 0) { /* a temporal artifact: also its default drift threshold (updates run, reason "") */
    configs[runs].policy = "deadline";
    if (run(target, ort, &configs[runs], in_c[runs], "C", NULL)) return 1;
    runs++;
  }
  for (i = 0; i < engines && runs < MAX_RUNS; i++, runs++) {
    configs[runs].policy = "fixed";
    sprintf(configs[runs].args, "index=%d", i);
    if (run(target, ort, &configs[runs], in_c[runs], "C", NULL)) return 1;
  }

  if (!setlocale(LC_ALL, locale)) {
    fprintf(stderr, "test_locale: locale %s is not installed (build one with localedef and set LOCPATH)\n", locale);
    return 2;
  }
  if (strcmp(localeconv()->decimal_point, ".") == 0)
    fprintf(stderr, "test_locale: note: locale %s has '.' as its decimal point; this run proves little\n", locale);
  for (i = 0; i < runs; i++) {
    sprintf(what, "%s %s", configs[i].policy, configs[i].args);
    if (run(target, ort, &configs[i], in_locale[i], locale, NULL)) {
      failed = 1;
      continue;
    }
    failed |= compare(what, in_c[i], in_locale[i]);
    if (verbose) {
      int t;
      for (t = 0; t < FRAMES; t++)
        printf("%s frame %d: engine %s budget %g reason '%s' / '%s'\n", what, t, in_locale[i][t].engine, in_locale[i][t].budget,
               in_c[i][t].reason, in_locale[i][t].reason);
    }
  }
  for (i = 0; i < runs; i++) {
    release(in_c[i]);
    release(in_locale[i]);
  }
  setlocale(LC_ALL, "C");
  if (failed) {
    fprintf(stderr, "test_locale: FAILED in locale %s\n", locale);
    return 1;
  }
  printf("test_locale: ok: %d configuration(s) x %d frames identical in C and %s\n", runs, FRAMES, locale);
  return 0;
}
