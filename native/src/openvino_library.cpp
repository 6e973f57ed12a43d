// Loading OpenVINO's C library (see openvino_api.hpp) and creating a runtime's core.
#include <dlfcn.h>
#include <sys/stat.h>

#include <cstdlib>
#include <map>
#include <mutex>

#include "openvino.hpp"
#include "openvino_api.hpp"

namespace edgeprune {

namespace {

std::string first_line(const std::string& text) {
  std::string s = text.substr(0, text.find('\n'));
  while (!s.empty() && (s.back() == '\r' || s.back() == ' ')) s.pop_back();
  return s.empty() ? "unknown error" : s;
}

// OpenVINO's messages are a stack of "Exception from src/...:" location lines with the reason last:
// keep the last line that is not a location (as edgeprune.backends.openvino.ov_message does).
std::string reason_line(const std::string& text) {
  std::string best, any;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(start, end - start);
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
    while (!line.empty() && line.front() == ' ') line.erase(0, 1);
    if (!line.empty()) {
      any = line;
      if (line.rfind("Exception from ", 0) != 0) best = line;
    }
    start = end + 1;
  }
  return best.empty() ? first_line(any) : best;
}

}  // namespace

std::string OvLibrary::message(ov_status_e status) const {
  std::string text;
  if (api.ov_get_last_err_msg) {
    // A copy (new[]) of the process's last message, released with ov_free.
    std::unique_ptr<const char, decltype(api.ov_free)> m(api.ov_get_last_err_msg(), api.ov_free);
    if (m) text = reason_line(m.get());
  }
  if (text.empty() || text == "unknown error") {
    const char* info = api.ov_get_error_info(status);
    text = info && *info ? info : "status " + std::to_string(static_cast<int>(status));
  }
  return text;
}

std::shared_ptr<const OvLibrary> OvLibrary::load(const std::string& requested) {
  // Never destroyed: the library stays loaded for the process (see openvino_api.hpp).
  static std::mutex* mutex = new std::mutex;
  static auto* cache = new std::map<std::string, std::shared_ptr<const OvLibrary>>;
  static void* bound = nullptr;  // the one OpenVINO library of this process
  static std::string bound_path;
  std::lock_guard<std::mutex> lock(*mutex);

  std::string wanted = requested;
  if (wanted.empty()) {
    const char* env = std::getenv("EDGEPRUNE_OPENVINO_LIBRARY");
    wanted = env && *env ? env : "libopenvino_c.so";
  }
  auto hit = cache->find(wanted);
  if (hit != cache->end()) return hit->second;

  const std::string install = "install the openvino package (pip install \"edgeprune[openvino]\") and pass its "
                              "openvino/libs/libopenvino_c.so.<version>, or set EDGEPRUNE_OPENVINO_LIBRARY";
  struct stat st;
  if (wanted.find('/') != std::string::npos && stat(wanted.c_str(), &st) != 0)
    fail(EDGEPRUNE_NOT_FOUND, "OpenVINO library " + wanted + ": no such file (" + install + ")");
  void* handle = dlopen(wanted.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!handle) {
    const char* e = dlerror();
    fail(EDGEPRUNE_BACKEND, "cannot load OpenVINO library " + wanted + ": " + first_line(e ? e : "dlopen failed") + " (" + install + ")");
  }
  std::shared_ptr<OvLibrary> lib(new OvLibrary);
  std::string missing;
#define EDGEPRUNE_OV_RESOLVE(name)                                                   \
  lib->api.name = reinterpret_cast<decltype(lib->api.name)>(dlsym(handle, #name)); \
  if (!lib->api.name && missing.empty()) missing = #name;
  EDGEPRUNE_OV_FUNCTIONS(EDGEPRUNE_OV_RESOLVE)
#undef EDGEPRUNE_OV_RESOLVE
  lib->api.ov_get_last_err_msg = reinterpret_cast<decltype(lib->api.ov_get_last_err_msg)>(dlsym(handle, "ov_get_last_err_msg"));
  if (!missing.empty()) {
    dlclose(handle);  // nothing of it ran
    fail(EDGEPRUNE_UNSUPPORTED, wanted + " is not OpenVINO's C library libopenvino_c (or one older than 2022.1): it exports no " + missing);
  }
  // A second OpenVINO stays loaded (its static initialisers ran; unloading is not safe) but unused.
  if (bound && bound != handle)
    fail(EDGEPRUNE_UNSUPPORTED, "OpenVINO library " + wanted + ": this process already runs OpenVINO from " + bound_path +
                                    " (one OpenVINO library per process)");
  ov_version_t v{nullptr, nullptr};
  lib->check(lib->api.ov_get_openvino_version(&v), EDGEPRUNE_BACKEND, wanted + ": ov_get_openvino_version failed: ");
  lib->version = v.buildNumber ? v.buildNumber : "";
  lib->api.ov_version_free(&v);
  lib->path = wanted;
  bound = handle;
  bound_path = wanted;
  (*cache)[wanted] = lib;
  return lib;
}

OvContext::OvContext(std::shared_ptr<const OvLibrary> library) : lib(std::move(library)), core(nullptr, lib->api.ov_core_free) {
  ov_core_t* raw = nullptr;
  lib->check(lib->api.ov_core_create(&raw), EDGEPRUNE_BACKEND, "OpenVINO " + lib->version + " (" + lib->path + "): cannot create a core: ");
  core.reset(raw);
  ov_available_devices_t list{nullptr, 0};
  lib->check(lib->api.ov_core_get_available_devices(core.get(), &list), EDGEPRUNE_BACKEND, "OpenVINO: cannot list its devices: ");
  for (size_t i = 0; i < list.size; ++i) devices.emplace_back(list.devices[i] ? list.devices[i] : "");
  lib->api.ov_available_devices_free(&list);
}

std::shared_ptr<OvContext> open_openvino(const std::string& library) {
  return std::make_shared<OvContext>(OvLibrary::load(library));
}

}  // namespace edgeprune
