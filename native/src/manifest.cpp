#include "manifest.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "common.hpp"

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

Json read_folder_json(const std::string& root, const std::string& name, const std::string& noun) {
  if (!is_dir(root)) fail(EDGEPRUNE_NOT_FOUND, root + ": not an " + noun + " directory");
  const std::string path = join(root, name);
  if (!is_file(path)) fail(EDGEPRUNE_NOT_FOUND, root + ": no " + name + " (not an edgeprune " + noun + ")");
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  if (!in.good() && !in.eof()) fail(EDGEPRUNE_CORRUPT, path + ": cannot read it");
  try {
    return Json::parse(text.str());
  } catch (const std::exception& e) {
    fail(EDGEPRUNE_CORRUPT, path + ": corrupt " + (name == "manifest.json" ? std::string("manifest") : name) + " (" + e.what() + ")");
  }
}

// Runs `body`, turning a JSON shape error (missing key, wrong type) into one CORRUPT line.
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

// model.input of a manifest (mean/std) and the pixel input's [N, 3, H, W] shape.
static InputSpec input_spec(const Json& model, const std::vector<Json>& shape, const std::string& where) {
  InputSpec s;
  const Json* input = model.find("input");
  if (!input || !input->find("mean") || !input->find("std"))
    fail(EDGEPRUNE_UNSUPPORTED, where + ": the model records no input normalisation");
  malformed(where + ": malformed input description", [&] {
    for (int c = 0; c < 3; ++c) {
      s.mean[c] = input->at("mean").array().at(static_cast<size_t>(c)).number();
      s.std[c] = input->at("std").array().at(static_cast<size_t>(c)).number();
    }
    if (shape.size() != 4 || shape[1].number() != 3) throw std::runtime_error("pixel input is not [N, 3, H, W]");
    s.height = static_cast<int>(shape[2].number());
    s.width = static_cast<int>(shape[3].number());
    if (s.height < 1 || s.width < 1) throw std::runtime_error("bad input size");
    return 0;
  });
  return s;
}

static std::vector<Profile> profiles_from(const Json& calibration, const std::vector<MemberSpec>& members,
                                          const std::string& root) {
  std::vector<Profile> out;
  const Json* stats = calibration.find("members");
  for (const auto& m : members) {
    const Json* s = stats ? stats->find(m.name) : nullptr;
    if (!s || !s->is_object())
      fail(EDGEPRUNE_INVALID_ARGUMENT, root + ": calibration lacks member " + m.name + "; run `edgeprune calibrate` again");
    malformed(root + ": malformed calibration of " + m.name, [&] {
      double p50 = s->at("p50_ms").number(), p95 = s->at("p95_ms").number();
      out.push_back(Profile{m.name, m.budget, p50, std::max(p95, p50)});
      return 0;
    });
  }
  return out;
}

static bool attach_engines(SetSpec& set, const std::string& engines, bool verify, Json* calibration) {
  const Json index = read_folder_json(engines, "engines.json", "engine build");
  const std::string ipath = join(engines, "engines.json");
  if (!index.is_object() || !index.find("kind") || !index.at("kind").is_string() ||
      index.at("kind").string() != "edgeprune-engine-build")
    fail(EDGEPRUNE_CORRUPT, ipath + ": not an edgeprune engine build (kind is not 'edgeprune-engine-build')");
  struct Built { std::string source_sha, file, backend; };
  std::vector<Built> built;
  malformed(ipath + ": malformed members list", [&] {
    for (const Json& m : index.at("members").array()) {
      const std::string name = m.at("path").string(), sha = m.at("engine_sha256").string();
      if (name.find('/') != std::string::npos) fail(EDGEPRUNE_CORRUPT, ipath + ": member path '" + name + "' leaves the folder");
      const std::string folder = join(engines, name);
      const Json e = read_folder_json(folder, "engine.json", "engine");
      const std::string epath = join(folder, "engine.json");
      if (!e.is_object() || !e.find("kind") || !e.at("kind").is_string() || e.at("kind").string() != "edgeprune-engine")
        fail(EDGEPRUNE_CORRUPT, epath + ": not an edgeprune engine (kind is not 'edgeprune-engine')");
      if (!e.find("format") || !e.at("format").is_number() || e.at("format").number() != 1)
        fail(EDGEPRUNE_UNSUPPORTED, epath + ": unsupported engine format");
      Built b{e.at("source").at("onnx_sha256").string(), join(folder, e.at("engine").at("file").string()),
              e.at("backend").string()};
      if (!is_file(b.file)) fail(EDGEPRUNE_NOT_FOUND, folder + ": " + e.at("engine").at("file").string() + " is missing");
      if (e.at("engine").at("sha256").string() != sha)
        fail(EDGEPRUNE_CORRUPT, folder + ": engine sha256 differs from engines.json (member replaced)");
      if (verify) verify_sha(b.file, sha, "engine.json");
      built.push_back(b);
    }
    return 0;
  });
  for (auto& m : set.members) {
    auto it = std::find_if(built.begin(), built.end(), [&](const Built& b) { return b.source_sha == m.onnx_sha256; });
    if (it == built.end())
      fail(EDGEPRUNE_NOT_FOUND, engines + ": no engine built from member " + m.name + "'s ONNX; run `edgeprune build` on this set");
    m.model_path = it->file;
    m.backend = it->backend;
  }
  const Json* cal = index.find("calibration");
  if (!cal || !cal->is_object()) return false;
  *calibration = *cal;
  return true;
}

SetSpec load_set(const std::string& root, const std::string& engines, bool verify) {
  const Json manifest = read_folder_json(root, "set.json", "engine set");
  const std::string spath = join(root, "set.json");
  if (!manifest.is_object() || !manifest.find("kind") || !manifest.at("kind").is_string() ||
      manifest.at("kind").string() != "edgeprune-engine-set")
    fail(EDGEPRUNE_CORRUPT, spath + ": not an edgeprune engine set (kind is not 'edgeprune-engine-set')");
  if (!manifest.find("format") || !manifest.at("format").is_number() || manifest.at("format").number() != 1)
    fail(EDGEPRUNE_UNSUPPORTED, spath + ": unsupported engine set format");
  SetSpec set;
  set.root = root;
  malformed(spath + ": malformed members list", [&] {
    for (const Json& m : manifest.at("members").array())
      set.members.push_back(MemberSpec{m.at("path").string(), m.at("budget").number(), m.at("onnx_sha256").string(), "", "ort-cpu"});
    return 0;
  });
  if (set.members.empty()) fail(EDGEPRUNE_CORRUPT, spath + ": the set has no members");
  std::stable_sort(set.members.begin(), set.members.end(), [](const MemberSpec& a, const MemberSpec& b) { return a.budget > b.budget; });
  for (size_t i = 0; i < set.members.size(); ++i) {
    MemberSpec& m = set.members[i];
    const std::string folder = join(root, m.name);
    if (m.name.find('/') != std::string::npos || !is_dir(folder)) fail(EDGEPRUNE_NOT_FOUND, root + ": member " + m.name + " is missing");
    const Json art = read_folder_json(folder, "manifest.json", "artifact");
    const std::string mpath = join(folder, "manifest.json");
    if (art.is_object() && art.find("kind") && art.at("kind").is_string() && art.at("kind").string() == "edgeprune-temporal")
      fail(EDGEPRUNE_UNSUPPORTED, folder + " is a temporal artifact, not an engine set member");
    for (const char* key : {"format", "model", "method", "plan", "inputs", "outputs", "onnx"})
      if (!art.is_object() || !art.find(key))
        fail(EDGEPRUNE_CORRUPT, mpath + ": manifest lacks required keys format, model, method, plan, inputs, outputs, onnx");
    malformed(mpath + ": malformed manifest", [&] {
      m.model_path = join(folder, art.at("onnx").at("file").string());
      if (!is_file(m.model_path)) fail(EDGEPRUNE_NOT_FOUND, folder + ": " + art.at("onnx").at("file").string() + " is missing");
      const std::string sha = art.at("onnx").at("sha256").string();
      if (verify) verify_sha(m.model_path, sha, "the manifest");
      if (sha != m.onnx_sha256) fail(EDGEPRUNE_CORRUPT, folder + ": ONNX sha256 differs from set.json (member replaced or changed)");
      if (i == 0) set.input = input_spec(art.at("model"), art.at("inputs").array().at(0).at("shape").array(), root);
      return 0;
    });
  }
  const Json* calibration = manifest.find("calibration");
  Json built_calibration;
  if (!engines.empty() && attach_engines(set, engines, verify, &built_calibration)) calibration = &built_calibration;
  if (!calibration || !calibration->is_object())
    fail(EDGEPRUNE_INVALID_ARGUMENT, root + ": the engine set is not calibrated; run `edgeprune calibrate " + root + "`");
  set.profiles = profiles_from(*calibration, set.members, root);
  return set;
}

bool is_temporal(const std::string& root) {
  const std::string path = join(root, "manifest.json");
  if (!is_file(path)) return false;
  try {
    Json m = read_folder_json(root, "manifest.json", "artifact");
    return m.find("kind") && m.at("kind").is_string() && m.at("kind").string() == "edgeprune-temporal";
  } catch (const std::exception&) {
    return false;
  }
}

TemporalSpec load_temporal(const std::string& root, bool verify) {
  const Json m = read_folder_json(root, "manifest.json", "artifact");
  const std::string mpath = join(root, "manifest.json");
  if (!m.find("format") || !m.at("format").is_number() || m.at("format").number() != 1)
    fail(EDGEPRUNE_UNSUPPORTED, mpath + ": unsupported temporal artifact format");
  TemporalSpec t;
  t.root = root;
  malformed(mpath + ": malformed temporal manifest", [&] {
    t.patches = static_cast<int>(m.at("patches").number());
    t.recompute = static_cast<int>(m.at("recompute").number());
    t.grid_h = static_cast<int>(m.at("grid").array().at(0).number());
    t.grid_w = static_cast<int>(m.at("grid").array().at(1).number());
    const Json& inputs = m.at("inputs");
    std::vector<Json> shape = inputs.at("pixel_values").array();
    if (!shape.empty() && !shape[0].is_number()) shape[0] = Json::parse("1");
    if (shape.at(0).number() != 1)
      fail(EDGEPRUNE_UNSUPPORTED, root + ": exported for batch " + std::to_string(static_cast<int>(shape[0].number())) +
                                      "; the temporal runtime runs one frame per stream: export with --batch 1");
    t.input = input_spec(m.at("model"), shape, root);
    for (const auto& kv : inputs.items()) {
      if (kv.first.rfind("cache_", 0) != 0) continue;
      std::vector<int64_t> dims;
      for (const Json& d : kv.second.array()) dims.push_back(d.is_number() ? static_cast<int64_t>(d.number()) : 1);
      t.cache_names.push_back(kv.first);
      t.cache_shapes.push_back(dims);
    }
    const Json& graphs = m.at("graphs");
    for (const char* g : {"refresh", "update"}) {
      const std::string file = join(root, graphs.at(g).at("file").string());
      if (!is_file(file)) fail(EDGEPRUNE_NOT_FOUND, root + ": " + g + " graph missing");
      if (verify) verify_sha(file, graphs.at(g).at("sha256").string(), "the manifest");
      (std::string(g) == "refresh" ? t.refresh_path : t.update_path) = file;
    }
    if (t.patches != t.grid_h * t.grid_w || t.recompute < 1 || t.recompute > t.patches)
      throw std::runtime_error("patches, grid and recompute disagree");
    return 0;
  });
  return t;
}

}  // namespace edgeprune
