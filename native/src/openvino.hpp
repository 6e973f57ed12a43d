// The OpenVINO backend: built engines of `edgeprune build SET --backend openvino` (model.blob, a
// compiled model written by CompiledModel.export_model(), next to its engine.json), imported and run
// through OpenVINO's C API. libedgeprune never links OpenVINO: openvino.cpp dlopens the openvino
// wheel's libs/libopenvino_c.so.<version> (or any path given) when a set with such engines is opened,
// so a machine without OpenVINO still runs ONNX Runtime engines. Builds without OpenVINO's headers
// compile openvino_stub.cpp, which refuses these engines with one line.
//
// The checks below need no OpenVINO and are header-only, so tests run them on any build.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "json.hpp"

namespace edgeprune {

class Engine;

// Whether OpenVINO reports `device` here: "CPU" is listed as is; "GPU" also names "GPU.0", "GPU.1"
// (as edgeprune.backends.openvino.check_device accepts).
inline bool openvino_device_listed(const std::string& device, const std::vector<std::string>& devices) {
  for (const auto& d : devices)
    if (d == device || d.substr(0, d.find('.')) == device) return true;
  return false;
}

inline std::string join_names(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out.empty() ? std::string("none") : out;
}

// The device an engine.json says its blob was compiled for (settings.device; CPU when unnamed, as
// edgeprune.engines.build does).
inline std::string openvino_engine_device(const Json& manifest) {
  const Json* settings = json_find(manifest, "settings");
  const Json* device = settings ? json_find(*settings, "device") : nullptr;
  return device && device->is_string() && !device->get_ref<const std::string&>().empty() ? device->get<std::string>()
                                                                                        : std::string("CPU");
}

// The command that rebuilds an engine, as edgeprune.engines.built.BuiltEngine.rebuild_command writes
// it: `edgeprune build SOURCE --backend openvino --precision P --device D --out FOLDER`, where a set
// build's SOURCE is its engines.json's "source" and FOLDER the whole build (`index` may be null).
inline std::string openvino_rebuild_command(const Json& manifest, const Json* index, const std::string& folder) {
  auto text = [](const Json* object, const char* key) {
    const Json* v = object ? json_find(*object, key) : nullptr;
    return v && v->is_string() ? v->get<std::string>() : std::string();
  };
  std::string source = index ? text(index, "source") : "";
  if (source.empty()) source = text(json_find(manifest, "source"), "artifact");
  std::string precision = text(&manifest, "precision");
  return "edgeprune build " + (source.empty() ? std::string("SET") : source) + " --backend openvino --precision " +
         (precision.empty() ? std::string("fp32") : precision) + " --device " + openvino_engine_device(manifest) + " --out " + folder;
}

// Why a built OpenVINO engine must not be imported here, or "" when it may: the checks of
// edgeprune.engines.built.BuiltEngine._openvino_stale_reason. An exported blob is tied to the exact
// OpenVINO build that wrote it (versions.openvino, the full build string of openvino.get_version(),
// compared with ov_get_openvino_version()'s buildNumber), and to a device OpenVINO reports.
// `rebuild`: the command that replaces it (openvino_rebuild_command).
inline std::string openvino_stale_reason(const Json& manifest, const std::string& running,
                                         const std::vector<std::string>& devices,
                                         const std::string& rebuild_command = "edgeprune build SET --backend openvino") {
  const std::string rebuild = "rebuild it on this machine: " + rebuild_command;
  const Json* versions = json_find(manifest, "versions");
  const Json* built = versions ? json_find(*versions, "openvino") : nullptr;
  const std::string built_text = built && built->is_string() ? built->get<std::string>() : "";
  if (built_text != running)
    return "blob written by OpenVINO " + (built_text.empty() ? std::string("(unrecorded version)") : built_text) +
           ", the OpenVINO library loaded here is " + running + ": " + rebuild;
  const std::string device = openvino_engine_device(manifest);
  if (!openvino_device_listed(device, devices))
    return "blob compiled for OpenVINO device " + device + ", OpenVINO here reports " + join_names(devices) + ": " + rebuild +
           " (--device naming one of those)";
  return "";
}

// One OpenVINO library (loaded once per process) and one ov_core_t, shared by the engines of one
// runtime (its device properties: threads, latency hint, precision).
class OvContext;

// Loads the library (`library` or $EDGEPRUNE_OPENVINO_LIBRARY, else "libopenvino_c.so" on the
// loader's path) and creates a core; throws Error (UNSUPPORTED from a build without the backend).
std::shared_ptr<OvContext> open_openvino(const std::string& library);
// The engine of one member: `path` is its model.blob (engine.json beside it); pixels [1, 3, height, width].
std::unique_ptr<Engine> make_openvino_engine(std::shared_ptr<OvContext> context, const std::string& path, int width,
                                             int height, int threads);

}  // namespace edgeprune
