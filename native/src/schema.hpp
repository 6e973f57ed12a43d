// Manifests are checked against the JSON Schemas (Draft 2020-12) that describe them for both sides,
// edgeprune/artifacts/schemas/<name>.schema.json. CMake compiles those files into the library
// (generated/edgeprune_schemas.inc in the build folder); they are evaluated with jsoncons' JSON Schema
// validator (header-only, Debian's libjsoncons-dev, fetched by native/build.sh like the other headers).
#pragma once

#include <string>
#include <vector>

#include "json.hpp"

namespace edgeprune {

// The first violation of `doc` against the schema `name` ("engine-set" for engine-set.schema.json),
// as "<JSON path>: <what>" (e.g. "$.members[0].budget: expected number, got string"), or "" when
// `doc` conforms. Throws Error(EDGEPRUNE_INTERNAL) for a schema the library does not embed.
std::string schema_violation(const Json& doc, const std::string& name);

// Throws Error(EDGEPRUNE_CORRUPT, "<file>: corrupt <label> (<violation>; see <name>.schema.json)")
// when `doc` does not conform.
void check_schema(const Json& doc, const std::string& name, const std::string& file, const std::string& label);

// The embedded schema names, sorted ("artifact", "calibration", ...).
std::vector<std::string> schema_names();

}  // namespace edgeprune
