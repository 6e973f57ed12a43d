// The hand-written SHA-256 (src/sha256.cpp) against NIST's published example vectors (FIPS 180-4
// examples, "SHA-256" in csrc.nist.gov's Examples with Intermediate Values, and the long-message
// vectors of FIPS 180-2 appendix B), whole and fed in uneven pieces, and sha256_file on a file.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "sha256.hpp"

static int failures = 0;

static void expect(const std::string& what, const std::string& got, const char* want) {
  if (got != want) {
    std::fprintf(stderr, "test_sha256: %s: got %s, want %s\n", what.c_str(), got.c_str(), want);
    ++failures;
  }
}

// The digest of `message`, fed in pieces of `chunk` bytes (0: at once).
static std::string digest(const std::string& message, size_t chunk) {
  edgeprune::Sha256 s;
  if (chunk == 0) {
    s.update(message.data(), message.size());
  } else {
    for (size_t i = 0; i < message.size(); i += chunk) s.update(message.data() + i, std::min(chunk, message.size() - i));
  }
  return s.hex();
}

int main() {
  struct Vector {
    const char* name;
    std::string message;
    const char* sha256;
  };
  const std::vector<Vector> vectors = {
      {"\"abc\" (one block)", "abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
      {"empty string", "", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
      {"448 bits (two blocks)", "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
      {"896 bits",
       "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu",
       "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1"},
      {"one million 'a'", std::string(1000000, 'a'), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"},
  };
  // Whole, byte by byte (short ones), and in pieces that straddle the 64-byte blocks and the padding.
  for (const Vector& v : vectors) {
    expect(v.name, digest(v.message, 0), v.sha256);
    for (size_t chunk : {1, 3, 55, 56, 63, 64, 65, 997}) {
      if (chunk == 1 && v.message.size() > 100000) continue;
      expect(std::string(v.name) + " in pieces of " + std::to_string(chunk), digest(v.message, chunk), v.sha256);
    }
  }
  // Lengths around the padding boundary (55/56/64 bytes), against values from Python's hashlib.
  expect("55 x 'a'", digest(std::string(55, 'a'), 0), "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318");
  expect("56 x 'a'", digest(std::string(56, 'a'), 0), "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a");
  expect("64 x 'a'", digest(std::string(64, 'a'), 0), "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb");

  // sha256_file reads in 64 KiB pieces: a file of one million 'a' crosses several.
  char path[] = "/tmp/test_sha256_XXXXXX";
  const int fd = mkstemp(path);
  if (fd < 0) {
    std::perror("test_sha256: mkstemp");
    return 1;
  }
  FILE* f = fdopen(fd, "wb");
  const std::string million(1000000, 'a');
  std::fwrite(million.data(), 1, million.size(), f);
  std::fclose(f);
  expect("sha256_file (one million 'a')", edgeprune::sha256_file(path), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  std::remove(path);

  if (failures) {
    std::fprintf(stderr, "test_sha256: %d failure(s)\n", failures);
    return 1;
  }
  std::printf("test_sha256: ok (NIST vectors: abc, empty, 448 and 896 bits, one million 'a'; pieces; a file)\n");
  return 0;
}
