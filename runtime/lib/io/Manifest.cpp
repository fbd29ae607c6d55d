//===- Manifest.cpp - a manifest's entries checked --------------------------===//
#include "bridge/Manifest.h"

#include "bridge/Files.h"

#include <cstring>

namespace bridge {

/// The entries of the array \p Member ("chunks", "objects") of the
/// torch_dist manifest \p M; every bad entry is a problem and left out (its
/// key, when it has one, added to \p BadKeys).
std::vector<ListedRecord> listedRecords(const Json &M, const char *Member, const std::string &Path,
                                        std::vector<std::string> &Problems, std::set<std::string> &BadKeys) {
  std::vector<ListedRecord> Out;
  auto It = M.find(Member);
  if (It == M.end() || !It->is_array()) {
    Problems.push_back(Path + ": '" + Member + "' is " + (It == M.end() ? "missing" : jsonKind(*It)) +
                       ", not an array of records");
    return Out;
  }
  for (size_t I = 0; I < It->size(); ++I) {
    const Json &E = (*It)[I];
    ListedRecord R;
    R.At = Path + ": " + Member + "[" + std::to_string(I) + "]";
    R.Chunk = std::strcmp(Member, "chunks") == 0;
    if (!E.is_object()) {
      Problems.push_back(R.At + " is " + jsonKind(E) + ", not an object");
      continue;
    }
    ManifestEntry C(E, R.At, Problems);
    R.Key = C.string("key");
    if (C.ok())
      C.name(R.Key);
    R.File = C.fileName("file");
    R.Offset = C.number("offset");
    R.Length = C.number("length");
    R.Crc = C.crc();
    if (!C.ok()) {
      if (E.contains("key") && E["key"].is_string())
        BadKeys.insert(R.Key);
      continue;
    }
    R.At += " ('" + R.Key + "')";
    Out.push_back(std::move(R));
  }
  return Out;
}

} // namespace bridge
