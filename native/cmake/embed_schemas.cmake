# cmake -DOUT=<file.inc> -DSCHEMAS=<a.schema.json;b.schema.json...> -P embed_schemas.cmake
# Writes one `{"<file name>", R"edgeprune_schema(<text>)edgeprune_schema"},` line per schema, for
# src/schema.cpp: the JSON Schemas of edgeprune/artifacts/schemas compiled into the library.
set(text "// Generated from edgeprune/artifacts/schemas by native/cmake/embed_schemas.cmake; do not edit.\n")
foreach(schema IN LISTS SCHEMAS)
  get_filename_component(name "${schema}" NAME)
  file(READ "${schema}" body)
  string(FIND "${body}" ")edgeprune_schema\"" clash)
  if(NOT clash EQUAL -1)
    message(FATAL_ERROR "${schema} holds the raw-string delimiter )edgeprune_schema\"")
  endif()
  string(APPEND text "{\"${name}\", R\"edgeprune_schema(${body})edgeprune_schema\"},\n")
endforeach()
file(WRITE "${OUT}" "${text}")
