// Pieces of the TensorRT backend (src/trt.cpp) that need neither TensorRT nor CUDA: the check of an
// engine's manifest against the running GPU and TensorRT, and fp16 <-> fp32 conversion. Header-only,
// so they can be checked on machines where trt.cpp is not compiled.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "json.hpp"

namespace edgeprune {

// "10.3.0" from getInferLibVersion()'s (MAJOR * 100 + MINOR) * 100 + PATCH (TensorRT 10 and later).
inline std::string trt_version_text(int32_t v) {
  return std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." + std::to_string(v % 100);
}

// The leading numeric components of "10.3.0.26" (stops at the first non-number).
inline std::vector<long> version_parts(const std::string& text) {
  std::vector<long> out;
  size_t i = 0;
  while (i < text.size()) {
    size_t j = i;
    while (j < text.size() && text[j] >= '0' && text[j] <= '9') ++j;
    if (j == i || j - i > 9) break;
    out.push_back(std::stol(text.substr(i, j - i)));
    if (j >= text.size() || text[j] != '.') break;
    i = j + 1;
  }
  return out;
}

// Whether the TensorRT an engine was built with (the Python module's __version__, "10.3.0" or
// "10.3.0.26") is the running one: major, minor and patch, as far as the manifest names them (the
// library reports no build number).
inline bool same_trt_version(const std::string& built, int32_t running) {
  const std::vector<long> b = version_parts(built);
  const long r[3] = {running / 10000, running / 100 % 100, running % 100};
  if (b.empty()) return false;
  for (size_t i = 0; i < b.size() && i < 3; ++i)
    if (b[i] != r[i]) return false;
  return true;
}

// Why a built TensorRT engine must not be deserialized here, or "" when it may: the checks of
// edgeprune.engines.build.BuiltEngine.stale_reason, on the engine.json of `edgeprune build --backend
// trt` (versions.tensorrt, device.compute_capability, settings.version_compatible and
// settings.hardware_compatibility). A field the manifest lacks (or holds null) is not checked.
inline std::string trt_stale_reason(const Json& manifest, int32_t running_trt, int cc_major, int cc_minor,
                                    const std::string& gpu_name) {
  const std::string rebuild = "rebuild it with `edgeprune build SET --backend trt` on this machine";
  const Json* settings = json_find(manifest, "settings");
  auto setting = [&](const char* key) -> const Json* { return settings ? json_find(*settings, key) : nullptr; };
  const Json* vc = setting("version_compatible");
  const bool version_compatible = vc && vc->is_boolean() && vc->get<bool>();
  const Json* hw = setting("hardware_compatibility");
  const bool any_ampere = hw && hw->is_string() && hw->get_ref<const std::string&>() == "ampere+";

  const Json* versions = json_find(manifest, "versions");
  const Json* built = versions ? json_find(*versions, "tensorrt") : nullptr;
  const std::string built_text = built && built->is_string() ? built->get<std::string>() : "";
  if (!built_text.empty() && !version_compatible && !same_trt_version(built_text, running_trt))
    return "engine built with TensorRT " + built_text + ", this machine has TensorRT " + trt_version_text(running_trt) +
           ": " + rebuild + " (or build it with --version-compatible)";

  const Json* device = json_find(manifest, "device");
  const Json* cc = device ? json_find(*device, "compute_capability") : nullptr;
  const std::string cc_text = cc && cc->is_string() ? cc->get<std::string>() : "";
  const std::string here = std::to_string(cc_major) + "." + std::to_string(cc_minor);
  if (!cc_text.empty() && cc_text != here && !any_ampere)
    return "engine built for compute capability " + cc_text + ", this GPU" + (gpu_name.empty() ? "" : " (" + gpu_name + ")") +
           " is " + here + ": " + rebuild + " (or, for Ampere and newer GPUs, with --hardware-compat ampere+)";
  return "";
}

// IEEE 754 binary16 -> binary32, exact (subnormals, infinities and NaNs included).
inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu;
  uint32_t bits;
  if (exponent == 0x1f) {
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;
  } else {  // subnormal: normalise
    exponent = 113;
    while (!(mantissa & 0x400u)) {
      mantissa <<= 1;
      --exponent;
    }
    bits = sign | (exponent << 23) | ((mantissa & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// binary32 -> binary16, rounding to nearest even (as numpy's astype(float16) and CUDA's __float2half_rn).
inline uint16_t float_to_half(float f) {
  uint32_t x;
  std::memcpy(&x, &f, sizeof x);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t abs = x & 0x7fffffffu;
  if (abs >= 0x7f800000u)  // infinity, NaN (kept quiet, payload's top bits)
    return static_cast<uint16_t>(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u | ((abs >> 13) & 0x3ffu) : 0u));
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to >= 65520: infinity
  if (abs < 0x38800000u) {  // below 2^-14: a subnormal half (or zero)
    if (abs < 0x33000000u) return sign;  // at most 2^-25: rounds to zero (the tie goes to even 0)
    const uint32_t shift = 126 - (abs >> 23);  // 14 + (113 - exponent): bits dropped below the half's lsb
    const uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
    uint32_t h = mant >> (shift + 0);
    const uint32_t rest = mant & ((1u << shift) - 1);
    const uint32_t halfway = 1u << (shift - 1);
    if (rest > halfway || (rest == halfway && (h & 1u))) ++h;
    return static_cast<uint16_t>(sign | h);
  }
  uint32_t h = ((abs >> 13) - (112u << 10)) & 0xffffu;  // rebias the exponent, keep 10 mantissa bits
  const uint32_t rest = abs & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // a carry into the exponent is right
  return static_cast<uint16_t>(sign | h);
}

}  // namespace edgeprune
