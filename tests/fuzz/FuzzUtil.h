//===- FuzzUtil.h - what the fuzz targets share -------------------------===//
//
// Each target is a libFuzzer entry point (LLVMFuzzerTestOneInput). Bad input
// must end in bridge::Error (or the compiler's diagnostics), never in a crash,
// a hang, a sanitizer report or another exception type: anything else
// escapes the target and libFuzzer records it.
//
//===----------------------------------------------------------------------===//
#ifndef BRIDGE_TESTS_FUZZ_FUZZUTIL_H
#define BRIDGE_TESTS_FUZZ_FUZZUTIL_H

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <unistd.h>

namespace fuzz {

/// A directory of this process's own, made once, removed at exit.
inline const std::string &scratchDir() {
  static const std::string Dir = [] {
    char Tmpl[] = "/tmp/bridge-fuzz-XXXXXX";
    const char *D = ::mkdtemp(Tmpl);
    if (!D)
      std::abort();
    std::string Path = D;
    static std::string ToRemove = Path;
    std::atexit([] { std::system(("rm -rf '" + ToRemove + "'").c_str()); });
    return Path;
  }();
  return Dir;
}

inline void writeBytes(const std::string &Path, const uint8_t *Data, size_t Size) {
  std::ofstream Out(Path, std::ios::binary | std::ios::trunc);
  Out.write(reinterpret_cast<const char *>(Data), static_cast<std::streamsize>(Size));
}

} // namespace fuzz

#endif
