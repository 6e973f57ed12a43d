// SHA-256 (FIPS 180-4), to check model files against their manifests as Python does (hashlib).
// Checked against NIST's published vectors by tests/test_sha256.cpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace edgeprune {

class Sha256 {
 public:
  void update(const void* data, size_t n);
  std::string hex();  // finishes the digest: call once, after the last update

 private:
  void compress(const uint8_t* p);
  uint32_t h_[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  uint8_t block_[64];
  size_t used_ = 0;
  uint64_t bits_ = 0;
};

// Lower-case hex digest of a file's bytes; a file that cannot be read is an Error.
std::string sha256_file(const std::string& path);

}  // namespace edgeprune
