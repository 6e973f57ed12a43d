#include "json.hpp"

#include "common.hpp"

#include <cctype>
#include <set>
#include <stdexcept>
#include <vector>

namespace edgeprune {

namespace {

constexpr size_t kMaxDepth = 64;  // manifests are shallow; refuse pathological input

// Text from the document as it may appear in a one-line message: control characters (a key may
// hold "\n") and, with `ascii`, every byte >= 0x7f (what the lexer refused may be invalid UTF-8)
// become \xNN.
std::string printable(const std::string& text, bool ascii) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (char c : text) {
    const unsigned char b = static_cast<unsigned char>(c);
    if (b < 0x20 || b == 0x7f || (ascii && b > 0x7f)) {
      out += "\\x";
      out += digits[b >> 4];
      out += digits[b & 0xf];
    } else {
      out += c;
    }
  }
  return out;
}

// Builds the document from nlohmann's SAX events: its own DOM parser keeps the last of duplicate
// keys silently; this one refuses them and bounds the nesting.
class Builder : public nlohmann::json_sax<Json> {
 public:
  Json root;
  std::string error;  // set when the parse stopped

  bool null() override { return put(Json(nullptr)); }
  bool boolean(bool v) override { return put(Json(v)); }
  bool number_integer(number_integer_t v) override { return put(Json(v)); }
  bool number_unsigned(number_unsigned_t v) override { return put(Json(v)); }
  bool number_float(number_float_t v, const string_t&) override { return put(Json(v)); }
  bool string(string_t& v) override { return put(Json(std::move(v))); }
  bool binary(binary_t&) override { return stop("binary value"); }  // not produced from JSON text

  bool start_object(std::size_t) override { return open(Json::object()); }
  bool start_array(std::size_t) override { return open(Json::array()); }
  bool key(string_t& k) override {
    Frame& f = stack_.back();
    if (!f.keys.insert(k).second) return stop("duplicate key '" + printable(k, false) + "' in " + path());
    f.key = std::move(k);
    return true;
  }
  bool end_object() override { return close(); }
  bool end_array() override { return close(); }

  bool parse_error(std::size_t position, const std::string&, const nlohmann::detail::exception& e) override {
    // e.what(): "[json.exception.parse_error.101] parse error at line 1, column 9: syntax error
    // while parsing value - invalid number; expected digit after '.'; last read: '1.'"
    std::string what = e.what();
    if (what.rfind("[json.exception.", 0) == 0 && what.find("] ") != std::string::npos) what = what.substr(what.find("] ") + 2);
    const size_t column = what.find(", column ");
    if (what.rfind("parse error", 0) == 0 && column != std::string::npos) {
      const size_t colon = what.find(": ", column);
      if (colon != std::string::npos) what = what.substr(colon + 2);
    }
    const size_t dash = what.find(" - ");
    if (what.rfind("syntax error while parsing", 0) == 0 && dash != std::string::npos) what = what.substr(dash + 3);
    if (what.find("unexpected end of input") != std::string::npos || what.find("empty input") != std::string::npos)
      what = "unexpected end of text";
    else if (what.rfind("invalid number", 0) == 0) what = "malformed number (" + what + ")";
    // position: bytes read, the offending one included; "byte N" counts from 0 as before.
    error = printable(what, true) + " at byte " + std::to_string(position > 0 ? position - 1 : 0);
    return false;
  }

 private:
  struct Frame {
    Json* value;
    std::set<std::string> keys;  // objects: the keys seen so far
    std::string key;             // objects: the key of the value being read
  };
  std::vector<Frame> stack_;

  bool stop(const std::string& why) {
    error = why;
    return false;
  }

  // The value just read goes into the innermost open container (or becomes the document).
  Json* insert(Json&& v) {
    if (stack_.empty()) {
      root = std::move(v);
      return &root;
    }
    Frame& f = stack_.back();
    if (f.value->is_array()) {
      auto& array = f.value->get_ref<Json::array_t&>();
      array.push_back(std::move(v));
      return &array.back();
    }
    // Keys are unique (checked in key()): append without ordered_map's linear search.
    auto& members = static_cast<Json::object_t::Container&>(f.value->get_ref<Json::object_t&>());
    members.emplace_back(f.key, std::move(v));  // f.key stays: paths in messages name it
    return &members.back().second;
  }
  bool put(Json&& v) {
    insert(std::move(v));
    return true;
  }
  bool open(Json&& container) {
    if (stack_.size() >= kMaxDepth) return stop("nesting deeper than " + std::to_string(kMaxDepth) + " levels at " + path(true));
    Json* v = insert(std::move(container));
    stack_.push_back(Frame{v, {}, {}});
    return true;
  }
  bool close() {
    stack_.pop_back();
    return true;
  }
  // Where the parser is, for messages ("$.members[2]"): the innermost open container, or with
  // `pending` the place of the value about to be read into it.
  std::string path(bool pending = false) const {
    std::string p = "$";
    for (size_t i = 0; i < stack_.size(); ++i) {
      const Frame& f = stack_[i];
      const bool last = i + 1 == stack_.size();
      if (last && !pending) break;
      // Inner frames: their child is the container of the next frame (already inserted last).
      if (f.value->is_array()) p = json_path_append(p, last ? f.value->size() : f.value->size() - 1);
      else p = json_path_append(p, f.key);
    }
    return p;
  }
};

}  // namespace

Json parse_json(const std::string& text) {
  if (text.compare(0, 3, "\xEF\xBB\xBF") == 0) throw std::runtime_error("byte order mark at byte 0 (JSON text has none)");
  // nlohmann's lexer reads numbers with strtod after replacing '.' by the first byte of
  // localeconv()->decimal_point: right for one-byte separators (de_DE's ','), wrong where it is
  // multibyte (U+066B in ps_AF: "0.485" read as 0). In the C locale both are '.'.
  CLocaleScope c_locale;
  Builder builder;
  const bool ok = Json::sax_parse(text, &builder, nlohmann::detail::input_format_t::json, /*strict=*/true,
                                  /*ignore_comments=*/false);
  if (!ok) throw std::runtime_error(builder.error.empty() ? "malformed JSON" : builder.error);
  return std::move(builder.root);
}

const char* json_type_name(const Json& v) {
  switch (v.type()) {
    case Json::value_t::null: return "null";
    case Json::value_t::boolean: return "a boolean";
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned:
    case Json::value_t::number_float: return "a number";
    case Json::value_t::string: return "a string";
    case Json::value_t::array: return "a list";
    case Json::value_t::object: return "an object";
    default: return "a binary value";
  }
}

static void expect(bool ok, const char* wanted, const Json& v) {
  if (!ok) throw std::runtime_error(std::string("expected ") + wanted + ", got " + json_type_name(v));
}

double json_number(const Json& v) {
  expect(v.is_number(), "a number", v);
  return v.get<double>();
}

const std::string& json_string(const Json& v) {
  expect(v.is_string(), "a string", v);
  return v.get_ref<const std::string&>();
}

const Json::array_t& json_array(const Json& v) {
  expect(v.is_array(), "a list", v);
  return v.get_ref<const Json::array_t&>();
}

const Json* json_find(const Json& object, const std::string& key) {
  if (!object.is_object()) return nullptr;
  auto it = object.find(key);
  return it == object.end() ? nullptr : &*it;
}

const Json& json_at(const Json& object, const std::string& key) {
  expect(object.is_object(), "an object", object);
  const Json* v = json_find(object, key);
  if (!v) throw std::runtime_error("missing key '" + key + "'");
  return *v;
}

std::string json_path_append(const std::string& path, const std::string& key) {
  bool identifier = !key.empty() && !std::isdigit(static_cast<unsigned char>(key[0]));
  for (char c : key)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_')) identifier = false;
  if (identifier) return path + "." + key;
  std::string quoted;
  for (char c : key) {
    if (c == '\'' || c == '\\') quoted += '\\';
    quoted += c;
  }
  return path + "['" + printable(quoted, false) + "']";
}

std::string json_path_append(const std::string& path, size_t index) { return path + "[" + std::to_string(index) + "]"; }

}  // namespace edgeprune
