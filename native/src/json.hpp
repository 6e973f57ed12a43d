// JSON for the project's manifests (set.json, manifest.json, engines.json, engine.json), read with
// nlohmann/json (header-only, fetched by native/build.sh). Objects keep their keys in file order
// (ordered_json): a temporal manifest lists its caches in the graphs' order.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

namespace edgeprune {

using Json = nlohmann::ordered_json;

// Parses a whole document strictly (RFC 8259: no comments, NaN, trailing commas, leading zeros, `1.`,
// `-.5`, unpaired surrogates, invalid UTF-8, byte order mark or trailing characters), refusing
// duplicate object keys and nesting deeper than 64, in the C locale whatever the process's locale is.
// Throws std::runtime_error with one line: "<what> at byte N" (N counts from 0) or "duplicate key
// 'k' in <JSON path>".
Json parse_json(const std::string& text);

// Typed access with one-line messages ("expected a number, got a string", "missing key 'x'"), for
// code that reads a document already checked against its schema (schema.hpp).
const char* json_type_name(const Json& v);
double json_number(const Json& v);
const std::string& json_string(const Json& v);
const Json::array_t& json_array(const Json& v);
const Json& json_at(const Json& object, const std::string& key);   // throws when absent
const Json* json_find(const Json& object, const std::string& key); // nullptr when absent or not an object

// "$", "$.members[0].budget", "$.calibration.members['b1.00']": a location inside a document, in the
// notation of Python's jsonschema (ValidationError.json_path), keys that are not identifiers quoted.
std::string json_path_append(const std::string& path, const std::string& key);
std::string json_path_append(const std::string& path, size_t index);

}  // namespace edgeprune
