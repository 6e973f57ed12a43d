/* Stands in for an ONNX Runtime older than the library accepts: it exports OrtGetApiBase like
 * every ONNX Runtime does, reports version 1.10.0 and serves no C API version newer than 10 (the
 * ABI an old libonnxruntime.so presents to a loader). Used by the "ORT older than required" test. */
#include <stddef.h>
#include <stdint.h>

typedef struct FakeApiBase {
  const void* (*GetApi)(uint32_t version);
  const char* (*GetVersionString)(void);
} FakeApiBase;

static const void* get_api(uint32_t version) {
  (void)version;
  return NULL;
}
static const char* version_string(void) { return "1.10.0"; }
static const FakeApiBase base = {get_api, version_string};

__attribute__((visibility("default"))) const FakeApiBase* OrtGetApiBase(void) { return &base; }
