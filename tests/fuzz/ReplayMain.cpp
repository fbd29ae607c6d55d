//===- ReplayMain.cpp - runs a fuzz target over its committed corpus ----===//
//
// Built with every compiler (no libFuzzer needed): each file under the
// given directories goes through the target once, as libFuzzer would pass
// it. A crash or an escaping exception fails the run; ctest runs it.
//
//===----------------------------------------------------------------------===//
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *Data, size_t Size);

int main(int argc, char **argv) {
  size_t Count = 0;
  for (int I = 1; I < argc; ++I) {
    std::vector<std::filesystem::path> Paths;
    if (std::filesystem::is_directory(argv[I])) {
      for (const auto &E : std::filesystem::recursive_directory_iterator(argv[I]))
        if (E.is_regular_file())
          Paths.push_back(E.path());
    } else {
      Paths.push_back(argv[I]);
    }
    std::sort(Paths.begin(), Paths.end());
    for (const auto &P : Paths) {
      std::ifstream In(P, std::ios::binary);
      std::vector<uint8_t> Bytes((std::istreambuf_iterator<char>(In)), std::istreambuf_iterator<char>());
      try {
        LLVMFuzzerTestOneInput(Bytes.data(), Bytes.size());
      } catch (const std::exception &X) {
        std::fprintf(stderr, "%s: escaped: %s\n", P.c_str(), X.what());
        return 1;
      }
      ++Count;
    }
  }
  std::printf("%zu input(s) replayed\n", Count);
  return Count ? 0 : 1;
}
