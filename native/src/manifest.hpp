// Reading the folders edgeprune writes (engine sets, temporal artifacts, built engines) into plain
// structs, with the same checks and one-line messages as the Python loaders. Every manifest is
// checked against its JSON Schema (edgeprune/artifacts/schemas, see schema.hpp) before it is read.
#pragma once

#include <string>
#include <vector>

#include "json.hpp"
#include "policy.hpp"
#include "sha256.hpp"

namespace edgeprune {

bool is_dir(const std::string& path);
bool is_file(const std::string& path);
// Parsed JSON of root/name; a missing folder or file, or corrupt JSON, is one Error line.
Json read_folder_json(const std::string& root, const std::string& name, const std::string& noun);

struct InputSpec {
  int width = 0, height = 0;
  double mean[3] = {0, 0, 0}, std[3] = {1, 1, 1};
};

struct MemberSpec {
  std::string name;       // folder, e.g. "b0.75"
  double budget = 0.0;
  std::string onnx_sha256;
  std::string model_path; // the file the backend loads (ONNX, or a built engine)
  std::string backend;    // "ort-cpu" (plain ONNX), "ort-cuda", "ort-trt" or "trt"
};

struct SetSpec {
  std::string root;
  InputSpec input;
  std::vector<MemberSpec> members;  // largest budget first
  std::vector<Profile> profiles;    // same order
};

// An engine set folder; with `engines`, its members run on the engines `edgeprune build SET` wrote
// there (calibrated in engines.json when `edgeprune calibrate SET --engines` ran, else the set's).
SetSpec load_set(const std::string& root, const std::string& engines, bool verify);

struct TemporalSpec {
  std::string root;
  InputSpec input;
  int patches = 0, recompute = 0, grid_h = 0, grid_w = 0;
  std::string refresh_path, update_path;
  std::vector<std::string> cache_names;             // "cache_keys.0", ... in manifest order
  std::vector<std::vector<int64_t>> cache_shapes;
};

bool is_temporal(const std::string& root);
TemporalSpec load_temporal(const std::string& root, bool verify);

// The checks of each manifest on its parsed document alone (no file is opened), in the order the
// loaders above run them; each throws Error. `file` is the manifest's path, for messages. Used by
// the loaders and by the fuzz target (fuzz/fuzz_manifest.cpp).
namespace manifest {
// set.json: kind, format, schema; the members, largest budget first.
std::vector<MemberSpec> set_members(const Json& doc, const std::string& file);
// A member's manifest.json (in `folder` of the set `root`): what the member loads (onnx.file) and its
// sha256; `input` (may be null) receives the input description.
struct Member {
  std::string onnx_file, onnx_sha256;
};
Member set_member(const Json& doc, const std::string& file, const std::string& folder, const std::string& root, InputSpec* input);
// The calibration object of set.json or engines.json: one profile per member, same order.
std::vector<Profile> profiles(const Json& calibration, const std::vector<MemberSpec>& members, const std::string& root);
// engines.json: its members (path, engine sha256).
struct BuiltMember {
  std::string path, engine_sha256;
};
std::vector<BuiltMember> engine_build(const Json& doc, const std::string& file);
// engine.json: the ONNX it was built from, its engine file (relative) and sha256, its backend.
struct Engine {
  std::string source_sha256, file, sha256, backend;
};
Engine engine(const Json& doc, const std::string& file);
// A temporal manifest.json: everything but the graphs' files (temporal_graph: "refresh", "update").
TemporalSpec temporal(const Json& doc, const std::string& file, const std::string& root);
struct GraphFile {
  std::string file, sha256;
};
GraphFile temporal_graph(const Json& doc, const char* graph);
}  // namespace manifest

}  // namespace edgeprune
