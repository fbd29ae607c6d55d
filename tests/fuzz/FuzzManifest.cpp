//===- FuzzManifest.cpp - a torch_dist manifest.json as verify reads it --===//
//
// Input: the text of a manifest.json. It is read by the one JSON reader and
// its record lists checked entry by entry as `verify` checks them before
// reading any record: whatever the members, their types and counts, a list
// of problems or of records, never a crash.
//
//===----------------------------------------------------------------------===//
#include "bridge/Manifest.h"
#include "bridge/StrictJson.h"

#include <cstdint>
#include <cstdlib>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *Data, size_t Size) {
  using namespace bridge;
  Json M;
  try {
    M = parseJson<Json>(std::string(reinterpret_cast<const char *>(Data), Size), "manifest.json", "manifest.json");
  } catch (const Error &) {
    return 0;
  }
  if (!M.is_object())
    return 0;
  std::vector<std::string> Problems;
  std::set<std::string> BadKeys;
  for (const char *Member : {"chunks", "objects"})
    for (const ListedRecord &R : listedRecords(M, Member, "manifest.json", Problems, BadKeys))
      if (!files::isPlainName(R.File)) // what verify relies on
        std::abort();
  return 0;
}
