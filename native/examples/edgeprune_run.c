/* edgeprune_run: a plain C99 client of libedgeprune.
 *
 *   edgeprune_run SET FOLDER [--ort LIB] [--target MS] [--policy NAME] [--provider P]
 *       runs every binary PPM (P6, 8-bit) of FOLDER in name order;
 *   edgeprune_run SET - WIDTHxHEIGHT [options]
 *       reads raw RGB frames of that size from stdin until it ends
 *       (e.g. ffmpeg -i clip.mp4 -f rawvideo -pix_fmt rgb24 - | edgeprune_run SET - 1280x720).
 * Prints one line per frame: budget, engine, provider, times, whether the deadline held. */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgeprune/edgeprune.h"

static int by_name(const void* a, const void* b) { return strcmp(*(char* const*)a, *(char* const*)b); }

/* Reads a P6 PPM with maxval 255; returns NULL (and says why) otherwise. */
static unsigned char* read_ppm(const char* path, int* w, int* h) {
  FILE* f = fopen(path, "rb");
  char magic[3] = {0};
  int maxval = 0;
  unsigned char* data;
  size_t n;
  if (!f) return NULL;
  if (fscanf(f, "%2s %d %d %d", magic, w, h, &maxval) != 4 || strcmp(magic, "P6") != 0 || maxval != 255 || *w < 1 || *h < 1) {
    fprintf(stderr, "%s: not a binary 8-bit PPM\n", path);
    fclose(f);
    return NULL;
  }
  fgetc(f); /* the single whitespace after maxval */
  n = (size_t)*w * (size_t)*h * 3;
  data = (unsigned char*)malloc(n);
  if (data && fread(data, 1, n, f) != n) {
    fprintf(stderr, "%s: truncated\n", path);
    free(data);
    data = NULL;
  }
  fclose(f);
  return data;
}

static int run_one(edgeprune_runtime* rt, const unsigned char* rgb, int w, int h, long index) {
  edgeprune_frame frame;
  edgeprune_request request;
  edgeprune_result result;
  edgeprune_status* status;
  edgeprune_frame_init(&frame);
  edgeprune_request_init(&request);
  edgeprune_result_init(&result);
  frame.rgb = rgb, frame.width = w, frame.height = h;
  status = edgeprune_infer(rt, &frame, &request, &result);
  if (status) {
    fprintf(stderr, "frame %ld: %s\n", index, edgeprune_status_message(status));
    edgeprune_status_free(status);
    return 1;
  }
  printf("frame %ld budget %.2f engine %s provider %s pre %.3f engine %.3f post %.3f sched %.3f total %.3f ms %s %s\n",
         index, result.budget, result.engine, result.provider, result.pre_ms, result.engine_ms, result.post_ms,
         result.scheduler_ms, result.total_ms, result.deadline_met ? "met" : "MISSED", result.reason);
  return 0;
}

int main(int argc, char** argv) {
  edgeprune_options options;
  edgeprune_runtime* rt = NULL;
  edgeprune_status* status;
  int i, w = 0, h = 0, rc = 0;
  const char* source;
  if (argc < 3) {
    fprintf(stderr, "usage: %s SET (FOLDER | - WIDTHxHEIGHT) [--ort LIB] [--target MS] [--policy NAME] [--provider P]\n", argv[0]);
    return 2;
  }
  edgeprune_options_init(&options);
  options.target_ms = 33.3;
  source = argv[2];
  i = 3;
  if (strcmp(source, "-") == 0) {
    if (argc < 4 || sscanf(argv[3], "%dx%d", &w, &h) != 2 || w < 1 || h < 1) {
      fprintf(stderr, "raw input needs WIDTHxHEIGHT after '-'\n");
      return 2;
    }
    i = 4;
  }
  for (; i + 1 < argc; i += 2) {
    if (strcmp(argv[i], "--ort") == 0) options.ort_library = argv[i + 1];
    else if (strcmp(argv[i], "--target") == 0) options.target_ms = atof(argv[i + 1]);
    else if (strcmp(argv[i], "--policy") == 0) options.policy = argv[i + 1];
    else if (strcmp(argv[i], "--provider") == 0) options.provider = argv[i + 1];
    else {
      fprintf(stderr, "unknown option %s\n", argv[i]);
      return 2;
    }
  }
  status = edgeprune_open(argv[1], &options, &rt);
  if (status) {
    fprintf(stderr, "error: %s\n", edgeprune_status_message(status));
    edgeprune_status_free(status);
    return 1;
  }
  if (w > 0) { /* raw frames on stdin */
    size_t n = (size_t)w * (size_t)h * 3;
    unsigned char* buf = (unsigned char*)malloc(n);
    long index = 0;
    while (buf && fread(buf, 1, n, stdin) == n) rc |= run_one(rt, buf, w, h, index++);
    free(buf);
  } else {
    DIR* dir = opendir(source);
    struct dirent* e;
    char** names = NULL;
    size_t count = 0, k;
    if (!dir) {
      fprintf(stderr, "error: cannot open folder %s\n", source);
      edgeprune_close(rt);
      return 1;
    }
    while ((e = readdir(dir)) != NULL) {
      size_t len = strlen(e->d_name);
      if (len > 4 && strcmp(e->d_name + len - 4, ".ppm") == 0) {
        char** grown = (char**)realloc(names, (count + 1) * sizeof *names);
        if (!grown) break;
        names = grown;
        names[count] = (char*)malloc(strlen(source) + len + 2);
        sprintf(names[count++], "%s/%s", source, e->d_name);
      }
    }
    closedir(dir);
    qsort(names, count, sizeof *names, by_name);
    for (k = 0; k < count; k++) {
      unsigned char* rgb = read_ppm(names[k], &w, &h);
      if (rgb) rc |= run_one(rt, rgb, w, h, (long)k);
      else rc = 1;
      free(rgb);
      free(names[k]);
    }
    free(names);
  }
  edgeprune_close(rt);
  return rc;
}
