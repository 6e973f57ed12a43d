// The JSON reader (src/json.cpp: nlohmann/json, strict, duplicate keys refused, C locale), the
// manifests' JSON Schemas as the library embeds and evaluates them (src/schema.cpp), the document
// checks of src/manifest.cpp and the TensorRT and OpenVINO manifest checks of src/trt.hpp and
// src/openvino.hpp (header-only: they run on builds without either backend). With EDGEPRUNE_TEST_SET
// (an engine set) and EDGEPRUNE_TEST_TEMPORAL (a temporal artifact), their real manifests must
// conform too. Locales that are not installed (setlocale fails) are reported and skipped.
#include <algorithm>
#include <clocale>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "common.hpp"
#include "json.hpp"
#include "manifest.hpp"
#include "openvino.hpp"
#include "schema.hpp"
#include "trt.hpp"

using edgeprune::Json;

static int failures = 0;

static void check(bool ok, const std::string& what) {
  if (!ok) {
    std::fprintf(stderr, "test_json: FAILED: %s\n", what.c_str());
    ++failures;
  }
}

// The message of what `body` throws ("" when it does not throw).
template <typename F>
static std::string thrown(F body) {
  try {
    body();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

static void refused(const std::string& text, const std::string& part) {
  const std::string m = thrown([&] { edgeprune::parse_json(text); });
  check(!m.empty() && m.find(part) != std::string::npos, "parse_json(" + text.substr(0, 60) + ") refused with '" + part + "', got '" + m + "'");
}

static void accepted(const std::string& text, const std::string& dump) {
  const std::string m = thrown([&] { check(edgeprune::parse_json(text).dump() == dump, "parse_json(" + text + ") == " + dump); });
  check(m.empty(), "parse_json(" + text + ") accepted, got '" + m + "'");
}

static void test_grammar() {
  accepted(" {\"a\": [1, -2.5e3, 0.485, true, null, \"\\u00e9\\ud83d\\ude00\"]} ", "{\"a\":[1,-2500.0,0.485,true,null,\"é😀\"]}");
  accepted("{\"z\": 1, \"a\": 2}", "{\"z\":1,\"a\":2}");  // file order kept
  accepted("-0", "0");
  accepted("1E+2", "100.0");
  refused("01", "at byte 1");
  refused("1.", "malformed number");
  refused("-.5", "malformed number");
  refused(".5", "at byte 0");
  refused("+1", "at byte 0");
  refused("0x10", "at byte 1");
  refused("NaN", "at byte 0");
  refused("Infinity", "at byte 0");
  refused("[1,]", "at byte 3");
  refused("{\"a\":1,}", "at byte 7");
  refused("[1] x", "at byte 4");
  refused("{} {}", "at byte 3");
  refused("", "unexpected end of text at byte 0");
  refused("{\"format\": 1, \"members\": [", "unexpected end of text at byte 26");
  refused("\"\\ud800\"", "surrogate");
  refused("\"\\udc00\"", "surrogate");
  refused("\"\\ud800\\u0041\"", "surrogate");
  refused("\"a\xff\"", "UTF-8");
  refused("\"tab\there\"", "control character");
  refused("// comment\n{}", "at byte 0");
  refused("\xEF\xBB\xBF{}", "byte order mark");
  refused("{\"a\": 1, \"a\": 2}", "duplicate key 'a' in $");
  refused("{\"m\": {\"b1.00\": {}, \"x\": [0, {\"k\": 1, \"k\": 1}]}}", "duplicate key 'k' in $.m.x[1]");
  refused("{\"m\": {\"b1.00\": 1, \"b1.00\": 2}}", "duplicate key 'b1.00' in $.m");
  // Messages stay one printable line: control characters and undecodable bytes are escaped.
  refused("{\"a\\nb\": {\"k\\u0000\": 1, \"k\\u0000\": 2}}", "duplicate key 'k\\x00' in $['a\\x0ab']");
  refused("[\"\xff\xfe\"]", "invalid string: ill-formed UTF-8 byte; last read: '\"\\xff' at byte 2");
  std::string deep = "$";
  for (int i = 0; i < 64; ++i) deep += "[0]";
  refused(std::string(65, '[') + std::string(65, ']'), "nesting deeper than 64 levels at " + deep);
  accepted(std::string(64, '[') + std::string(64, ']'), std::string(64, '[') + std::string(64, ']'));
  refused("1e400", "number overflow");
}

// Numbers read the same in any locale, decimal comma or multibyte separator.
static void test_locales() {
  const std::string text = "{\"mean\": [0.485, 0.456, 0.406], \"p\": 2.5e-1, \"n\": 1234567, \"neg\": -0.5}";
  for (const char* locale : {"C", "de_DE.UTF-8", "ps_AF.UTF-8"}) {
    if (!std::setlocale(LC_ALL, locale)) {
      std::fprintf(stderr, "test_json: locale %s not installed: not checked here (tests/native/test_native_locale.py builds it)\n", locale);
      continue;
    }
    const std::string m = thrown([&] {
      const Json j = edgeprune::parse_json(text);
      check(j["mean"][0].get<double>() == 0.485 && j["mean"][2].get<double>() == 0.406 && j["p"].get<double>() == 0.25 &&
                j["n"].get<int64_t>() == 1234567 && j["neg"].get<double>() == -0.5,
            std::string("numbers read in locale ") + locale + ": " + j.dump());
    });
    check(m.empty(), std::string("parse in locale ") + locale + ": " + m);
  }
  std::setlocale(LC_ALL, "C");
}

static std::string read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

static const char* kSha = "705596c485fd481733bb3bda7c958383d48c18453385e8f8fffc11298de2bbb2";

static Json valid_set() {
  return edgeprune::parse_json(std::string(R"({"format": 1, "kind": "edgeprune-engine-set", "model": {}, "method": "tome",
    "members": [{"budget": 0.5, "path": "b0.50", "macs_ratio": 0.5, "final_tokens": 94, "onnx_sha256": ")") + kSha + R"("},
                {"budget": 1.0, "path": "b1.00", "macs_ratio": 1.0, "final_tokens": 256, "onnx_sha256": ")" + kSha + R"("}],
    "calibration": {"members": {"b1.00": {"p50_ms": 12.0, "p95_ms": 14.0}, "b0.50": {"p50_ms": 8, "p95_ms": 9.5}}},
    "extra": "kept: Python may write more than C reads"})");
}

// `mutate` applied to a valid set.json must give exactly `message` from the schema.
template <typename F>
static void set_violation(F mutate, const std::string& message) {
  Json doc = valid_set();
  mutate(doc);
  const std::string got = edgeprune::schema_violation(doc, "engine-set");
  check(got == message, "engine-set violation: want '" + message + "', got '" + got + "'");
}

static void test_schemas() {
  const std::vector<std::string> names = edgeprune::schema_names();
  for (const char* n : {"artifact", "calibration", "engine", "engine-build", "engine-set", "temporal"})
    check(std::find(names.begin(), names.end(), n) != names.end(), std::string("schema ") + n + " is embedded");
  check(edgeprune::schema_violation(valid_set(), "engine-set").empty(), "a valid set.json conforms: " + edgeprune::schema_violation(valid_set(), "engine-set"));
  set_violation([](Json& d) { d["members"][1]["budget"] = "1.0"; }, "$.members[1].budget: expected number, got string");
  set_violation([](Json& d) { d["members"][0].erase("onnx_sha256"); }, "$.members[0]: missing key 'onnx_sha256'");
  set_violation([](Json& d) { d["format"] = 2; }, "$.format: expected 1, got 2");
  set_violation([](Json& d) { d["kind"] = "x"; }, "$.kind: expected \"edgeprune-engine-set\", got \"x\"");
  set_violation([](Json& d) { d["members"][0]["onnx_sha256"] = "abc"; }, "$.members[0].onnx_sha256: a string of 3 bytes (minLength 64)");
  set_violation([](Json& d) { d["members"][0]["final_tokens"] = 9.5; }, "$.members[0].final_tokens: expected integer, got number");
  set_violation([](Json& d) { d["members"][0]["final_tokens"] = 94.0; }, "");  // 94.0 is an integer (Draft 2020-12)
  set_violation([](Json& d) { d["members"][0]["final_tokens"] = 1.6e116; }, "");  // integral, beyond int64 (a fuzz finding)
  set_violation([](Json& d) { d["members"][0]["final_tokens"] = -1e300; }, "");
  set_violation([](Json& d) { d["format"] = 1e300; }, "$.format: expected 1, got 1e+300");
  set_violation([](Json& d) { d["members"] = Json::array(); }, "$.members: a list of 0 items (minItems 1)");
  set_violation([](Json& d) { d["calibration"]["members"]["b1.00"].erase("p95_ms"); },
                "$.calibration.members['b1.00']: missing key 'p95_ms'");
  set_violation([](Json& d) { d["calibration"]["members"]["b0.50"]["p50_ms"] = nullptr; },
                "$.calibration.members['b0.50'].p50_ms: expected number, got null");
  set_violation([](Json& d) { d["calibration"] = nullptr; }, "");  // not calibrated: load_set says so
  set_violation([](Json& d) { d["calibration"] = 3; }, "$.calibration: expected object or null, got integer");
  set_violation([](Json& d) { d = Json::array(); }, "$: expected object, got array");

  Json engine = edgeprune::parse_json(std::string(R"({"kind": "edgeprune-engine", "format": 1, "backend": "ort-gpu",
      "source": {"onnx_sha256": ")") + kSha + R"("}, "engine": {"file": "model.onnx", "sha256": ")" + kSha + R"("}})");
  const std::string bad_backend = edgeprune::schema_violation(engine, "engine");  // the enum's values may grow
  check(bad_backend.rfind("$.backend: expected one of [\"trt\",\"ort-trt\",\"ort-cuda\",\"ort-cpu\"", 0) == 0 &&
            bad_backend.find("], got \"ort-gpu\"") != std::string::npos,
        "engine.json enum: " + bad_backend);
  engine["backend"] = "ort-cpu";
  check(edgeprune::schema_violation(engine, "engine").empty(), "engine.json conforms: " + edgeprune::schema_violation(engine, "engine"));

  // The loaders' document checks: legacy checks first (kind, format, no members), then the schema.
  const std::string file = "/x/set.json";
  auto members = [&](const Json& d) { return thrown([&] { edgeprune::manifest::set_members(d, file); }); };
  Json d = valid_set();
  check(members(d).empty(), "set_members on a valid set.json");
  check(edgeprune::manifest::set_members(d, file).front().name == "b1.00", "members largest budget first");
  d["kind"] = "other";
  check(members(d) == "/x/set.json: not an edgeprune engine set (kind is not 'edgeprune-engine-set')", "kind first: " + members(d));
  d = valid_set();
  d["format"] = 7;
  check(members(d) == "/x/set.json: unsupported engine set format", "format: " + members(d));
  d = valid_set();
  d["members"] = Json::array();
  check(members(d) == "/x/set.json: the set has no members", "no members: " + members(d));
  d = valid_set();
  d["members"][0]["budget"] = "x";
  check(members(d) == "/x/set.json: corrupt set.json ($.members[0].budget: expected number, got string; see engine-set.schema.json)",
        "schema message: " + members(d));
  const std::string unknown = thrown([&] { edgeprune::schema_violation(d, "nope"); });
  check(unknown.find("no embedded JSON Schema named 'nope'") != std::string::npos, "unknown schema: " + unknown);
}

// Real manifests written by Python conform.
static void test_real(const char* set, const char* temporal) {
  if (set && *set) {
    const Json doc = edgeprune::parse_json(read(std::string(set) + "/set.json"));
    check(edgeprune::schema_violation(doc, "engine-set").empty(), std::string(set) + "/set.json: " + edgeprune::schema_violation(doc, "engine-set"));
    for (const Json& m : doc["members"]) {
      const std::string path = std::string(set) + "/" + m["path"].get<std::string>() + "/manifest.json";
      const Json art = edgeprune::parse_json(read(path));
      check(edgeprune::schema_violation(art, "artifact").empty(), path + ": " + edgeprune::schema_violation(art, "artifact"));
    }
  }
  if (temporal && *temporal) {
    const std::string path = std::string(temporal) + "/manifest.json";
    const Json doc = edgeprune::parse_json(read(path));
    check(edgeprune::schema_violation(doc, "temporal").empty(), path + ": " + edgeprune::schema_violation(doc, "temporal"));
  }
}

static void test_trt_stale_reason() {
  const Json built = edgeprune::parse_json(R"({"versions": {"tensorrt": "10.3.0"}, "device": {"compute_capability": "8.7"},
                                               "settings": {"version_compatible": false, "hardware_compatibility": "none"}})");
  check(edgeprune::trt_stale_reason(built, 100300, 8, 7, "Orin").empty(), "same TensorRT and GPU: not stale");
  check(edgeprune::trt_stale_reason(built, 100400, 8, 7, "Orin").find("engine built with TensorRT 10.3.0") == 0, "another TensorRT");
  check(edgeprune::trt_stale_reason(built, 100300, 8, 6, "A10").find("engine built for compute capability 8.7, this GPU (A10) is 8.6") == 0,
        "another GPU");
  const Json nulls = edgeprune::parse_json(R"({"versions": {"tensorrt": null}, "device": null})");
  check(edgeprune::trt_stale_reason(nulls, 100300, 8, 6, "").empty(), "null fields are not checked");
}

static void test_openvino_stale_reason() {
  const std::string here = "2026.4.1-22982-e213a147257-releases/2026/4";
  const std::vector<std::string> cpu = {"CPU"}, gpus = {"CPU", "GPU.0", "GPU.1"};
  const Json built = edgeprune::parse_json(R"({"versions": {"openvino": "2026.4.1-22982-e213a147257-releases/2026/4"},
                                               "settings": {"device": "CPU", "precision": "fp32"}})");
  check(edgeprune::openvino_stale_reason(built, here, cpu).empty(), "same OpenVINO build and device: not stale");
  // The full build string, not the release: another build of 2026.4.1 wrote another blob format.
  const std::string other = edgeprune::openvino_stale_reason(built, "2026.4.1-22983-0123456789a-releases/2026/4", cpu);
  check(other.find("blob written by OpenVINO " + here + ", the OpenVINO library loaded here is 2026.4.1-22983") == 0, other);
  const Json gpu = edgeprune::parse_json(R"({"versions": {"openvino": "2026.4.1-22982-e213a147257-releases/2026/4"},
                                             "settings": {"device": "GPU"}})");
  check(edgeprune::openvino_stale_reason(gpu, here, gpus).empty(), "GPU names GPU.0");
  const std::string no_gpu = edgeprune::openvino_stale_reason(gpu, here, cpu);
  check(no_gpu.find("blob compiled for OpenVINO device GPU, OpenVINO here reports CPU") == 0, no_gpu);
  check(edgeprune::openvino_stale_reason(gpu, here, {}).find("reports none") != std::string::npos, "no devices at all");
  // No device recorded: CPU, as edgeprune.engines.build assumes; no version recorded: refused.
  const Json unnamed = edgeprune::parse_json(R"({"versions": {"openvino": "2026.4.1-22982-e213a147257-releases/2026/4"}, "settings": {"device": null}})");
  check(edgeprune::openvino_engine_device(unnamed) == "CPU" && edgeprune::openvino_stale_reason(unnamed, here, cpu).empty(), "default device");
  const Json index = edgeprune::parse_json(R"({"source": "/data/SET"})");
  const Json member = edgeprune::parse_json(R"({"precision": "bf16", "settings": {"device": "GPU"}, "source": {"artifact": "/data/SET/b1.00"}})");
  check(edgeprune::openvino_rebuild_command(member, &index, "/data/BUILT") ==
            "edgeprune build /data/SET --backend openvino --precision bf16 --device GPU --out /data/BUILT", "rebuild command of a set build");
  check(edgeprune::openvino_rebuild_command(member, nullptr, "/data/E") ==
            "edgeprune build /data/SET/b1.00 --backend openvino --precision bf16 --device GPU --out /data/E", "rebuild command of one engine");
  const Json unversioned = edgeprune::parse_json(R"({"versions": {"openvino": null}})");
  check(edgeprune::openvino_stale_reason(unversioned, here, cpu).find("(unrecorded version)") != std::string::npos, "null version");
}

int main() {
  test_grammar();
  test_locales();
  test_schemas();
  test_real(std::getenv("EDGEPRUNE_TEST_SET"), std::getenv("EDGEPRUNE_TEST_TEMPORAL"));
  test_trt_stale_reason();
  test_openvino_stale_reason();
  if (failures) {
    std::fprintf(stderr, "test_json: %d failure(s)\n", failures);
    return 1;
  }
  std::printf("test_json: ok\n");
  return 0;
}
