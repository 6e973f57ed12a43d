// Internal error type and small helpers shared by the library's C++ sources.
#pragma once

#include <locale.h>

#include <chrono>
#include <stdexcept>
#include <string>

#include "edgeprune/edgeprune.h"

namespace edgeprune {

// Every failure inside the library is an Error; the C entry points turn it into a status.
// Messages are one line: they reach users verbatim (Python raises them as EdgepruneError).
class Error : public std::runtime_error {
 public:
  Error(edgeprune_code code, const std::string& message) : std::runtime_error(message), code_(code) {}
  edgeprune_code code() const { return code_; }

 private:
  edgeprune_code code_;
};

[[noreturn]] inline void fail(edgeprune_code code, const std::string& message) { throw Error(code, message); }

// The calling thread runs in the C locale while this lives (POSIX uselocale: other threads and the
// process's locale, set by the host application with setlocale, are untouched). For whatever reads
// or writes numbers as text through the C library (strtod, printf): manifests, policy parameters
// and reasons must not depend on the application's LC_NUMERIC (de_DE's decimal comma).
class CLocaleScope {
 public:
  CLocaleScope() {
    static const locale_t c_locale = newlocale(LC_ALL_MASK, "C", static_cast<locale_t>(nullptr));
    if (c_locale) previous_ = uselocale(c_locale);
  }
  ~CLocaleScope() {
    if (previous_) uselocale(previous_);
  }
  CLocaleScope(const CLocaleScope&) = delete;
  CLocaleScope& operator=(const CLocaleScope&) = delete;

 private:
  locale_t previous_ = static_cast<locale_t>(nullptr);
};

inline double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Copies into a fixed char field of a result struct, always NUL-terminated.
template <size_t N>
inline void copy_field(char (&dst)[N], const std::string& src) {
  size_t n = src.size() < N - 1 ? src.size() : N - 1;
  src.copy(dst, n);
  dst[n] = '\0';
}

}  // namespace edgeprune
