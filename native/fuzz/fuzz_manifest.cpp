// libFuzzer target: one input = one manifest's text, run through everything the library does with a
// manifest short of opening files: the strict JSON reader (src/json.cpp), every embedded JSON Schema
// (src/schema.cpp, jsoncons), the loaders' document checks (manifest::* in src/manifest.cpp, as for
// set.json, a member's manifest.json, engines.json, engine.json and a temporal manifest) and the
// TensorRT and OpenVINO staleness checks (src/trt.hpp, src/openvino.hpp). A refusal must be an edgeprune::Error (a status at the C
// ABI); any other exception, crash, leak or undefined behaviour is a finding. Also: what the reader
// accepts, nlohmann's writer writes back to the same document.
//
// Built by native/fuzz.sh (clang, -fsanitize=fuzzer,address,undefined, in native/build-fuzz).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "common.hpp"
#include "json.hpp"
#include "manifest.hpp"
#include "schema.hpp"
#include "openvino.hpp"
#include "trt.hpp"

using edgeprune::Json;

[[noreturn]] static void finding(const char* where, const std::exception& e) {
  std::fprintf(stderr, "fuzz_manifest: %s threw a non-Error exception: %s\n", where, e.what());
  std::abort();
}

// Runs one document check: an Error is a refusal (fine), anything else a finding.
template <typename F>
static void expect_status(const char* where, F body) {
  try {
    body();
  } catch (const edgeprune::Error&) {
  } catch (const std::exception& e) {
    finding(where, e);
  }
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  Json doc;
  try {
    doc = edgeprune::parse_json(text);
  } catch (const std::runtime_error&) {
    return 0;  // refused: read_folder_json turns this into "corrupt <file> (...)"
  } catch (const std::exception& e) {
    finding("parse_json", e);
  }

  // Round trip: the writer's text reads back to an equal document.
  try {
    if (edgeprune::parse_json(doc.dump()) != doc) {
      std::fprintf(stderr, "fuzz_manifest: dump/parse round trip changed the document\n");
      std::abort();
    }
  } catch (const std::exception& e) {
    finding("round trip", e);
  }

  for (const char* schema : {"engine-set", "artifact", "temporal", "calibration", "engine-build", "engine"})
    expect_status("schema_violation", [&] { edgeprune::schema_violation(doc, schema); });

  expect_status("manifest::set_members + profiles", [&] {
    const std::vector<edgeprune::MemberSpec> members = edgeprune::manifest::set_members(doc, "SET/set.json");
    const Json* calibration = edgeprune::json_find(doc, "calibration");
    if (calibration && calibration->is_object()) edgeprune::manifest::profiles(*calibration, members, "SET");
  });
  expect_status("manifest::set_member", [&] {
    edgeprune::InputSpec input;
    edgeprune::manifest::set_member(doc, "SET/b1.00/manifest.json", "SET/b1.00", "SET", &input);
  });
  expect_status("manifest::engine_build", [&] {
    edgeprune::manifest::engine_build(doc, "BUILT/engines.json");
    const Json* calibration = edgeprune::json_find(doc, "calibration");
    if (calibration && calibration->is_object()) edgeprune::manifest::profiles(*calibration, {}, "BUILT");
  });
  expect_status("manifest::engine", [&] { edgeprune::manifest::engine(doc, "BUILT/b1.00/engine.json"); });
  expect_status("manifest::temporal", [&] {
    edgeprune::manifest::temporal(doc, "T/manifest.json", "T");
    for (const char* g : {"refresh", "update"}) {
      try {
        edgeprune::manifest::temporal_graph(doc, g);
      } catch (const std::runtime_error&) {  // load_temporal: "malformed temporal manifest (...)"
      }
    }
  });
  try {
    edgeprune::trt_stale_reason(doc, 100300, 8, 7, "fuzz");
  } catch (const std::exception& e) {
    finding("trt_stale_reason", e);
  }
  try {
    edgeprune::openvino_stale_reason(doc, "2026.4.1-22982-e213a147257-releases/2026/4", {"CPU", "GPU.0"});
  } catch (const std::exception& e) {
    finding("openvino_stale_reason", e);
  }
  return 0;
}
