#include "json.hpp"

#include <cstdlib>
#include <stdexcept>

namespace edgeprune {

class JsonParser {
 public:
  explicit JsonParser(const std::string& text) : s_(text) {}

  Json document() {
    Json value = parse_value(0);
    skip_space();
    if (i_ != s_.size()) error("trailing characters");
    return value;
  }

 private:
  const std::string& s_;
  size_t i_ = 0;

  [[noreturn]] void error(const std::string& what) const {
    throw std::runtime_error(what + " at byte " + std::to_string(i_));
  }
  void skip_space() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\n' || s_[i_] == '\r' || s_[i_] == '\t')) ++i_;
  }
  bool consume(const char* word) {
    size_t n = std::char_traits<char>::length(word);
    if (s_.compare(i_, n, word) != 0) return false;
    i_ += n;
    return true;
  }

  Json parse_value(int depth) {
    if (depth > 64) error("nesting too deep");  // manifests are shallow; refuse pathological input
    skip_space();
    if (i_ >= s_.size()) error("unexpected end of text");
    Json v;
    char c = s_[i_];
    if (c == '{') {
      v.type_ = Json::Type::Object;
      ++i_;
      skip_space();
      if (i_ < s_.size() && s_[i_] == '}') { ++i_; return v; }
      for (;;) {
        skip_space();
        if (i_ >= s_.size() || s_[i_] != '"') error("expected a string key");
        std::string key = parse_string();
        skip_space();
        if (i_ >= s_.size() || s_[i_] != ':') error("expected ':'");
        ++i_;
        v.object_.emplace_back(std::move(key), parse_value(depth + 1));
        skip_space();
        if (i_ < s_.size() && s_[i_] == ',') { ++i_; continue; }
        if (i_ < s_.size() && s_[i_] == '}') { ++i_; return v; }
        error("expected ',' or '}'");
      }
    }
    if (c == '[') {
      v.type_ = Json::Type::Array;
      ++i_;
      skip_space();
      if (i_ < s_.size() && s_[i_] == ']') { ++i_; return v; }
      for (;;) {
        v.array_.push_back(parse_value(depth + 1));
        skip_space();
        if (i_ < s_.size() && s_[i_] == ',') { ++i_; continue; }
        if (i_ < s_.size() && s_[i_] == ']') { ++i_; return v; }
        error("expected ',' or ']'");
      }
    }
    if (c == '"') {
      v.type_ = Json::Type::String;
      v.string_ = parse_string();
      return v;
    }
    if (consume("true")) { v.type_ = Json::Type::Bool; v.bool_ = true; return v; }
    if (consume("false")) { v.type_ = Json::Type::Bool; return v; }
    if (consume("null")) return v;
    // Python's json writes NaN/Infinity for non-finite floats; accept them as numbers.
    if (consume("NaN")) { v.type_ = Json::Type::Number; v.number_ = std::strtod("nan", nullptr); return v; }
    if (consume("Infinity")) { v.type_ = Json::Type::Number; v.number_ = 1.0 / 0.0; return v; }
    if (consume("-Infinity")) { v.type_ = Json::Type::Number; v.number_ = -1.0 / 0.0; return v; }
    if (c == '-' || (c >= '0' && c <= '9')) {
      size_t start = i_;
      if (s_[i_] == '-') ++i_;
      while (i_ < s_.size() && std::string("0123456789.eE+-").find(s_[i_]) != std::string::npos) ++i_;
      std::string token = s_.substr(start, i_ - start);
      char* end = nullptr;
      v.number_ = std::strtod(token.c_str(), &end);  // correctly rounded, like Python's float()
      if (end != token.c_str() + token.size()) { i_ = start; error("malformed number"); }
      v.type_ = Json::Type::Number;
      return v;
    }
    error(std::string("unexpected character '") + c + "'");
  }

  static void append_utf8(std::string& out, unsigned cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  unsigned hex4() {
    if (i_ + 4 > s_.size()) error("truncated \\u escape");
    unsigned v = 0;
    for (int k = 0; k < 4; ++k) {
      char h = s_[i_++];
      v <<= 4;
      if (h >= '0' && h <= '9') v |= h - '0';
      else if (h >= 'a' && h <= 'f') v |= h - 'a' + 10;
      else if (h >= 'A' && h <= 'F') v |= h - 'A' + 10;
      else error("bad \\u escape");
    }
    return v;
  }

  std::string parse_string() {
    ++i_;  // opening quote
    std::string out;
    while (i_ < s_.size()) {
      char c = s_[i_++];
      if (c == '"') return out;
      if (static_cast<unsigned char>(c) < 0x20) error("control character in string");
      if (c != '\\') { out += c; continue; }
      if (i_ >= s_.size()) break;
      char e = s_[i_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          unsigned cp = hex4();
          if (cp >= 0xD800 && cp < 0xDC00 && i_ + 1 < s_.size() && s_[i_] == '\\' && s_[i_ + 1] == 'u') {
            i_ += 2;
            unsigned lo = hex4();
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          }
          append_utf8(out, cp);
          break;
        }
        default: error("bad escape");
      }
    }
    error("unterminated string");
  }
};

Json Json::parse(const std::string& text) { return JsonParser(text).document(); }

static const char* type_name(Json::Type t) {
  switch (t) {
    case Json::Type::Null: return "null";
    case Json::Type::Bool: return "a boolean";
    case Json::Type::Number: return "a number";
    case Json::Type::String: return "a string";
    case Json::Type::Array: return "a list";
    case Json::Type::Object: return "an object";
  }
  return "?";
}

static void expect(const Json& v, Json::Type t) {
  if (v.type() != t) throw std::runtime_error(std::string("expected ") + type_name(t) + ", got " + type_name(v.type()));
}

double Json::number() const { expect(*this, Type::Number); return number_; }
bool Json::boolean() const { expect(*this, Type::Bool); return bool_; }
const std::string& Json::string() const { expect(*this, Type::String); return string_; }
const std::vector<Json>& Json::array() const { expect(*this, Type::Array); return array_; }
const std::vector<std::pair<std::string, Json>>& Json::items() const { expect(*this, Type::Object); return object_; }

const Json* Json::find(const std::string& key) const {
  if (type_ != Type::Object) return nullptr;
  for (const auto& kv : object_)
    if (kv.first == key) return &kv.second;
  return nullptr;
}

const Json& Json::at(const std::string& key) const {
  expect(*this, Type::Object);
  const Json* v = find(key);
  if (!v) throw std::runtime_error("missing key '" + key + "'");
  return *v;
}

}  // namespace edgeprune
