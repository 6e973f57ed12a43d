// Internal to the OpenVINO backend (openvino_library.cpp, openvino.cpp): OpenVINO's C API as a table
// of function pointers resolved with dlsym from the libopenvino_c dlopen'ed at run time, their types
// taken from the wheel's own headers (openvino/c/openvino.h); nothing links OpenVINO. The C API throws
// nothing: every call returns an ov_status_e, which OvLibrary::check turns into an Error line.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "common.hpp"

// The C API's unscoped enums (OK, F32, ...) are global names: include this header last.
#include <openvino/c/openvino.h>

namespace edgeprune {

// The C API functions used (present since OpenVINO 2022.1), resolved with dlsym.
#define EDGEPRUNE_OV_FUNCTIONS(X)                                                                                    \
  X(ov_get_openvino_version) X(ov_version_free) X(ov_get_error_info) X(ov_free) X(ov_core_create) X(ov_core_free)   \
  X(ov_core_get_available_devices) X(ov_available_devices_free) X(ov_core_set_property) X(ov_core_import_model)     \
  X(ov_compiled_model_free) X(ov_compiled_model_inputs_size) X(ov_compiled_model_outputs_size)                       \
  X(ov_compiled_model_input_by_index) X(ov_compiled_model_output_by_index) X(ov_compiled_model_create_infer_request) \
  X(ov_compiled_model_get_property)                                                                                  \
  X(ov_output_const_port_free) X(ov_port_get_any_name) X(ov_port_get_partial_shape) X(ov_port_get_element_type)     \
  X(ov_partial_shape_free) X(ov_infer_request_free) X(ov_infer_request_set_input_tensor_by_index)                    \
  X(ov_infer_request_infer) X(ov_infer_request_get_output_tensor_by_index) X(ov_tensor_create_from_host_ptr)        \
  X(ov_tensor_free) X(ov_tensor_data) X(ov_tensor_get_byte_size) X(ov_tensor_get_element_type)

struct OvApi {
#define EDGEPRUNE_OV_MEMBER(name) decltype(&::name) name = nullptr;
  EDGEPRUNE_OV_FUNCTIONS(EDGEPRUNE_OV_MEMBER)
#undef EDGEPRUNE_OV_MEMBER
  // Optional (newer releases): the text of the last failure, far more useful than the status name.
  decltype(&::ov_get_last_err_msg) ov_get_last_err_msg = nullptr;
};

// One OpenVINO C library, loaded for the life of the process: OpenVINO's plugins and TBB keep
// threads and thread-local state that make unloading it unsafe.
class OvLibrary {
 public:
  OvApi api;
  std::string path, version;

  // One line for a failed call: OpenVINO's last error text, else the status's name.
  std::string message(ov_status_e status) const;
  void check(ov_status_e status, edgeprune_code code, const std::string& prefix) const {
    if (status != ov_status_e::OK) fail(code, prefix + message(status));
  }

  // Loads (once per path) and returns the library; throws Error. One OpenVINO library per process.
  static std::shared_ptr<const OvLibrary> load(const std::string& requested);
};

// One ov_core_t (this runtime's device properties) and the devices OpenVINO reports.
class OvContext {
 public:
  explicit OvContext(std::shared_ptr<const OvLibrary> library);
  std::shared_ptr<const OvLibrary> lib;
  std::unique_ptr<ov_core_t, decltype(OvApi::ov_core_free)> core;  // declared after lib: freed before it
  std::vector<std::string> devices;
};

}  // namespace edgeprune
