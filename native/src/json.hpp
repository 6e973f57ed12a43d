// A small JSON reader for the project's manifests (set.json, manifest.json, engines.json,
// engine.json). Strict: malformed text is an error naming the byte offset, never a guess.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace edgeprune {

class Json {
 public:
  enum class Type { Null, Bool, Number, String, Array, Object };

  static Json parse(const std::string& text);  // throws std::runtime_error("... at byte N")

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::Null; }
  bool is_number() const { return type_ == Type::Number; }
  bool is_string() const { return type_ == Type::String; }
  bool is_array() const { return type_ == Type::Array; }
  bool is_object() const { return type_ == Type::Object; }

  // Typed access; a wrong type throws std::runtime_error naming the expected type.
  double number() const;
  bool boolean() const;
  const std::string& string() const;
  const std::vector<Json>& array() const;
  // Object members (nullptr when absent or when this is not an object).
  const Json* find(const std::string& key) const;
  const Json& at(const std::string& key) const;  // throws when absent
  const std::vector<std::pair<std::string, Json>>& items() const;

 private:
  friend class JsonParser;
  Type type_ = Type::Null;
  bool bool_ = false;
  double number_ = 0.0;
  std::string string_;
  std::vector<Json> array_;
  std::vector<std::pair<std::string, Json>> object_;
};

}  // namespace edgeprune
