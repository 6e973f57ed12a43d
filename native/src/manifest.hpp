// Reading the folders edgeprune writes (engine sets, temporal artifacts, built engines) into plain
// structs, with the same checks and one-line messages as the Python loaders.
#pragma once

#include <string>
#include <vector>

#include "json.hpp"
#include "policy.hpp"

namespace edgeprune {

std::string sha256_file(const std::string& path);
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

}  // namespace edgeprune
