#include "manifest.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "common.hpp"
#include "schema.hpp"

namespace edgeprune {

bool is_dir(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool is_file(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

static std::string join(const std::string& a, const std::string& b) {
  return a.empty() || a.back() == '/' ? a + b : a + "/" + b;
}

static std::string label_of(const std::string& name) { return name == "manifest.json" ? std::string("manifest") : name; }

Json read_folder_json(const std::string& root, const std::string& name, const std::string& noun) {
  if (!is_dir(root)) fail(EDGEPRUNE_NOT_FOUND, root + ": not an " + noun + " directory");
  const std::string path = join(root, name);
  if (!is_file(path)) fail(EDGEPRUNE_NOT_FOUND, root + ": no " + name + " (not an edgeprune " + noun + ")");
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  if (!in.good() && !in.eof()) fail(EDGEPRUNE_CORRUPT, path + ": cannot read it");
  try {
    return parse_json(text.str());
  } catch (const std::exception& e) {
    fail(EDGEPRUNE_CORRUPT, path + ": corrupt " + label_of(name) + " (" + e.what() + ")");
  }
}

// Runs `body`, turning a JSON shape error (missing key, wrong type) into one CORRUPT line. The
// schemas catch these first; this stays for what they cannot say (cross-field agreement).
template <typename F>
static auto malformed(const std::string& where, F body) -> decltype(body()) {
  try {
    return body();
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    fail(EDGEPRUNE_CORRUPT, where + " (" + e.what() + ")");
  }
}

static void verify_sha(const std::string& file, const std::string& expected, const std::string& against) {
  if (sha256_file(file) != expected)
    fail(EDGEPRUNE_CORRUPT, file + ": sha256 does not match " + against + " (file changed or corrupt)");
}

static bool has_kind(const Json& doc, const char* kind) {
  const Json* k = json_find(doc, "kind");
  return k && k->is_string() && k->get_ref<const std::string&>() == kind;
}

static bool format_is_1(const Json& doc) {
  const Json* f = json_find(doc, "format");
  return f && f->is_number() && f->get<double>() == 1;
}

// model.input of a manifest (mean/std) and the pixel input's [N, 3, H, W] shape.
static InputSpec input_spec(const Json& model, const Json::array_t& shape, const std::string& where) {
  InputSpec s;
  const Json* input = json_find(model, "input");
  if (!input || !json_find(*input, "mean") || !json_find(*input, "std"))
    fail(EDGEPRUNE_UNSUPPORTED, where + ": the model records no input normalisation");
  malformed(where + ": malformed input description", [&] {
    for (size_t c = 0; c < 3; ++c) {
      s.mean[c] = json_number(json_array(json_at(*input, "mean")).at(c));
      s.std[c] = json_number(json_array(json_at(*input, "std")).at(c));
    }
    if (shape.size() != 4 || json_number(shape[1]) != 3) throw std::runtime_error("pixel input is not [N, 3, H, W]");
    const double h = json_number(shape[2]), w = json_number(shape[3]);
    if (!(h >= 1 && w >= 1 && h <= 65536 && w <= 65536)) throw std::runtime_error("bad input size");
    s.height = static_cast<int>(h);
    s.width = static_cast<int>(w);
    return 0;
  });
  return s;
}

namespace manifest {

std::vector<MemberSpec> set_members(const Json& doc, const std::string& file) {
  if (!has_kind(doc, "edgeprune-engine-set"))
    fail(EDGEPRUNE_CORRUPT, file + ": not an edgeprune engine set (kind is not 'edgeprune-engine-set')");
  if (!format_is_1(doc)) fail(EDGEPRUNE_UNSUPPORTED, file + ": unsupported engine set format");
  const Json* listed = json_find(doc, "members");
  if (listed && listed->is_array() && listed->empty()) fail(EDGEPRUNE_CORRUPT, file + ": the set has no members");
  check_schema(doc, "engine-set", file, "set.json");
  std::vector<MemberSpec> members;
  malformed(file + ": malformed members list", [&] {
    for (const Json& m : json_array(json_at(doc, "members")))
      members.push_back(MemberSpec{json_string(json_at(m, "path")), json_number(json_at(m, "budget")),
                                   json_string(json_at(m, "onnx_sha256")), "", "ort-cpu"});
    return 0;
  });
  std::stable_sort(members.begin(), members.end(), [](const MemberSpec& a, const MemberSpec& b) { return a.budget > b.budget; });
  return members;
}

Member set_member(const Json& doc, const std::string& file, const std::string& folder, const std::string& root, InputSpec* input) {
  if (has_kind(doc, "edgeprune-temporal")) fail(EDGEPRUNE_UNSUPPORTED, folder + " is a temporal artifact, not an engine set member");
  for (const char* key : {"format", "model", "method", "plan", "inputs", "outputs", "onnx"})
    if (!json_find(doc, key))
      fail(EDGEPRUNE_CORRUPT, file + ": manifest lacks required keys format, model, method, plan, inputs, outputs, onnx");
  if (!format_is_1(doc)) fail(EDGEPRUNE_UNSUPPORTED, file + ": unsupported manifest format");
  check_schema(doc, "artifact", file, "manifest");
  return malformed(file + ": malformed manifest", [&] {
    const Json& onnx = json_at(doc, "onnx");
    Member out{json_string(json_at(onnx, "file")), json_string(json_at(onnx, "sha256"))};
    if (input) *input = input_spec(json_at(doc, "model"), json_array(json_at(json_array(json_at(doc, "inputs")).at(0), "shape")), root);
    return out;
  });
}

std::vector<Profile> profiles(const Json& calibration, const std::vector<MemberSpec>& members, const std::string& root) {
  std::vector<Profile> out;
  const Json* stats = json_find(calibration, "members");
  for (const auto& m : members) {
    const Json* s = stats ? json_find(*stats, m.name) : nullptr;
    if (!s || !s->is_object())
      fail(EDGEPRUNE_INVALID_ARGUMENT, root + ": calibration lacks member " + m.name + "; run `edgeprune calibrate` again");
    malformed(root + ": malformed calibration of " + m.name, [&] {
      double p50 = json_number(json_at(*s, "p50_ms")), p95 = json_number(json_at(*s, "p95_ms"));
      out.push_back(Profile{m.name, m.budget, p50, std::max(p95, p50)});
      return 0;
    });
  }
  return out;
}

std::vector<BuiltMember> engine_build(const Json& doc, const std::string& file) {
  if (!has_kind(doc, "edgeprune-engine-build"))
    fail(EDGEPRUNE_CORRUPT, file + ": not an edgeprune engine build (kind is not 'edgeprune-engine-build')");
  check_schema(doc, "engine-build", file, "engines.json");
  std::vector<BuiltMember> out;
  malformed(file + ": malformed members list", [&] {
    for (const Json& m : json_array(json_at(doc, "members"))) {
      BuiltMember b{json_string(json_at(m, "path")), json_string(json_at(m, "engine_sha256"))};
      if (b.path.find('/') != std::string::npos) fail(EDGEPRUNE_CORRUPT, file + ": member path '" + b.path + "' leaves the folder");
      out.push_back(b);
    }
    return 0;
  });
  return out;
}

Engine engine(const Json& doc, const std::string& file) {
  if (!has_kind(doc, "edgeprune-engine"))
    fail(EDGEPRUNE_CORRUPT, file + ": not an edgeprune engine (kind is not 'edgeprune-engine')");
  if (!format_is_1(doc)) fail(EDGEPRUNE_UNSUPPORTED, file + ": unsupported engine format");
  check_schema(doc, "engine", file, "engine.json");
  return malformed(file + ": malformed engine manifest", [&] {
    Engine e{json_string(json_at(json_at(doc, "source"), "onnx_sha256")), json_string(json_at(json_at(doc, "engine"), "file")),
             json_string(json_at(json_at(doc, "engine"), "sha256")), json_string(json_at(doc, "backend"))};
    return e;
  });
}

TemporalSpec temporal(const Json& doc, const std::string& file, const std::string& root) {
  if (!format_is_1(doc)) fail(EDGEPRUNE_UNSUPPORTED, file + ": unsupported temporal artifact format");
  check_schema(doc, "temporal", file, "manifest");
  TemporalSpec t;
  t.root = root;
  malformed(file + ": malformed temporal manifest", [&] {
    const double patches = json_number(json_at(doc, "patches")), recompute = json_number(json_at(doc, "recompute"));
    const Json::array_t& grid = json_array(json_at(doc, "grid"));
    const double gh = json_number(grid.at(0)), gw = json_number(grid.at(1));
    if (!(patches >= 1 && patches <= 1e6 && gh >= 1 && gw >= 1 && gh * gw == patches && recompute >= 1 && recompute <= patches))
      throw std::runtime_error("patches, grid and recompute disagree");
    t.patches = static_cast<int>(patches), t.recompute = static_cast<int>(recompute);
    t.grid_h = static_cast<int>(gh), t.grid_w = static_cast<int>(gw);
    const Json& inputs = json_at(doc, "inputs");
    Json::array_t shape = json_array(json_at(inputs, "pixel_values"));
    if (!shape.empty() && !shape[0].is_number()) shape[0] = 1;  // a dynamic batch axis runs one frame
    if (json_number(shape.at(0)) != 1)
      fail(EDGEPRUNE_UNSUPPORTED, root + ": exported for batch " + shape[0].dump() +
                                      "; the temporal runtime runs one frame per stream: export with --batch 1");
    t.input = input_spec(json_at(doc, "model"), shape, root);
    for (const auto& kv : inputs.items()) {
      if (kv.key().rfind("cache_", 0) != 0) continue;
      std::vector<int64_t> dims;
      for (const Json& d : json_array(kv.value())) {
        // A dynamic axis (a name) runs one frame; a cache holds at most 2^31 floats.
        const double n = d.is_number() ? json_number(d) : 1;
        if (!(n >= 1 && n <= 2147483647.0)) throw std::runtime_error("cache " + kv.key() + " has a bad dimension");
        dims.push_back(static_cast<int64_t>(n));
      }
      t.cache_names.push_back(kv.key());
      t.cache_shapes.push_back(dims);
    }
    return 0;
  });
  return t;
}

GraphFile temporal_graph(const Json& doc, const char* graph) {
  const Json& g = json_at(json_at(doc, "graphs"), graph);
  return GraphFile{json_string(json_at(g, "file")), json_string(json_at(g, "sha256"))};
}

}  // namespace manifest

// Attaches the engines of a set build to the set's members; returns whether engines.json holds a
// calibration (copied to *calibration).
static bool attach_engines(SetSpec& set, const std::string& engines, bool verify, Json* calibration) {
  const Json index = read_folder_json(engines, "engines.json", "engine build");
  const std::vector<manifest::BuiltMember> listed = manifest::engine_build(index, join(engines, "engines.json"));
  struct Built { std::string source_sha, file, backend; };
  std::vector<Built> built;
  for (const auto& m : listed) {
    const std::string folder = join(engines, m.path);
    const Json e = read_folder_json(folder, "engine.json", "engine");
    const manifest::Engine engine = manifest::engine(e, join(folder, "engine.json"));
    Built b{engine.source_sha256, join(folder, engine.file), engine.backend};
    if (!is_file(b.file)) fail(EDGEPRUNE_NOT_FOUND, folder + ": " + engine.file + " is missing");
    if (engine.sha256 != m.engine_sha256) fail(EDGEPRUNE_CORRUPT, folder + ": engine sha256 differs from engines.json (member replaced)");
    if (verify) verify_sha(b.file, m.engine_sha256, "engine.json");
    built.push_back(b);
  }
  for (auto& m : set.members) {
    auto it = std::find_if(built.begin(), built.end(), [&](const Built& b) { return b.source_sha == m.onnx_sha256; });
    if (it == built.end())
      fail(EDGEPRUNE_NOT_FOUND, engines + ": no engine built from member " + m.name + "'s ONNX; run `edgeprune build` on this set");
    m.model_path = it->file;
    m.backend = it->backend;
  }
  const Json* cal = json_find(index, "calibration");
  if (!cal || !cal->is_object()) return false;
  *calibration = *cal;
  return true;
}

SetSpec load_set(const std::string& root, const std::string& engines, bool verify) {
  const Json doc = read_folder_json(root, "set.json", "engine set");
  SetSpec set;
  set.root = root;
  set.members = manifest::set_members(doc, join(root, "set.json"));
  for (size_t i = 0; i < set.members.size(); ++i) {
    MemberSpec& m = set.members[i];
    const std::string folder = join(root, m.name);
    if (m.name.find('/') != std::string::npos || !is_dir(folder)) fail(EDGEPRUNE_NOT_FOUND, root + ": member " + m.name + " is missing");
    const Json art = read_folder_json(folder, "manifest.json", "artifact");
    const manifest::Member member = manifest::set_member(art, join(folder, "manifest.json"), folder, root, i == 0 ? &set.input : nullptr);
    m.model_path = join(folder, member.onnx_file);
    if (!is_file(m.model_path)) fail(EDGEPRUNE_NOT_FOUND, folder + ": " + member.onnx_file + " is missing");
    if (verify) verify_sha(m.model_path, member.onnx_sha256, "the manifest");
    if (member.onnx_sha256 != m.onnx_sha256)
      fail(EDGEPRUNE_CORRUPT, folder + ": ONNX sha256 differs from set.json (member replaced or changed)");
  }
  const Json* calibration = json_find(doc, "calibration");
  Json built_calibration;
  if (!engines.empty() && attach_engines(set, engines, verify, &built_calibration)) calibration = &built_calibration;
  if (!calibration || !calibration->is_object())
    fail(EDGEPRUNE_INVALID_ARGUMENT, root + ": the engine set is not calibrated; run `edgeprune calibrate " + root + "`");
  set.profiles = manifest::profiles(*calibration, set.members, root);
  return set;
}

bool is_temporal(const std::string& root) {
  const std::string path = join(root, "manifest.json");
  if (!is_file(path)) return false;
  try {
    return has_kind(read_folder_json(root, "manifest.json", "artifact"), "edgeprune-temporal");
  } catch (const std::exception&) {
    return false;
  }
}

TemporalSpec load_temporal(const std::string& root, bool verify) {
  const Json doc = read_folder_json(root, "manifest.json", "artifact");
  const std::string file = join(root, "manifest.json");
  TemporalSpec t = manifest::temporal(doc, file, root);
  for (const char* g : {"refresh", "update"}) {
    const manifest::GraphFile graph = malformed(file + ": malformed temporal manifest", [&] { return manifest::temporal_graph(doc, g); });
    const std::string path = join(root, graph.file);
    if (!is_file(path)) fail(EDGEPRUNE_NOT_FOUND, root + ": " + g + " graph missing");
    if (verify) verify_sha(path, graph.sha256, "the manifest");
    (std::string(g) == "refresh" ? t.refresh_path : t.update_path) = path;
  }
  return t;
}

}  // namespace edgeprune
