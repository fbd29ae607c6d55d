//===- Manifest.h - the manifest.json every output carries -------*- C++ -*-===//
//
// import and reshard write iter_*/manifest.json (each record's file, place
// and CRC-32), export one beside its shards; `verify` reads them back. A
// manifest is input like any other: each entry's members are checked for
// their type, a bad one is a problem naming manifest.json, the entry and the
// member, never an abort. Torch-free, so it is fuzzed (fuzz-manifest).
//
//===----------------------------------------------------------------------===//
#ifndef BRIDGE_MANIFEST_H
#define BRIDGE_MANIFEST_H

#include "bridge/Config.h"
#include "bridge/Files.h"

#include <cstdint>
#include <set>
#include <string>
#include <vector>

namespace bridge {

/// What a JSON value is, for "'crc32' is a string, not ...".
inline std::string jsonKind(const Json &V) {
  if (V.is_number_float())
    return "a non-integer number";
  if (V.is_number_integer() && !V.is_number_unsigned() && V.get<int64_t>() < 0)
    return "a negative number";
  if (V.is_number_integer())
    return "the number " + std::to_string(V.get<uint64_t>());
  const char *Name = V.type_name();
  return (Name[0] == 'a' || Name[0] == 'o' ? "an " : "a ") + std::string(Name);
}

/// Checks the members of one manifest entry; each bad one is a problem
/// "<At>: <why>", and ok() says whether all were good.
class ManifestEntry {
public:
  ManifestEntry(const Json &Entry, std::string At, std::vector<std::string> &Problems)
      : E(Entry), At(std::move(At)), Problems(Problems) {}

  bool ok() const { return Ok; }
  /// The entry's name in messages from now on (once its key is known).
  void name(const std::string &Key) { At += " ('" + Key + "')"; }
  void bad(const std::string &Why) {
    Problems.push_back(At + ": " + Why);
    Ok = false;
  }

  /// Member \p Name, a string.
  std::string string(const char *Name) {
    auto It = E.find(Name);
    if (It == E.end())
      bad(std::string("has no '") + Name + "'");
    else if (!It->is_string())
      bad(std::string("'") + Name + "' is " + jsonKind(*It) + ", not a string");
    else
      return It->get<std::string>();
    return "";
  }
  /// Member \p Name, a plain file name of the directory.
  std::string fileName(const char *Name) {
    auto It = E.find(Name);
    if (It != E.end() && It->is_string() && !files::isPlainName(It->get_ref<const std::string &>())) {
      bad(std::string("'") + Name + "' is '" + It->get<std::string>() +
          "', not a plain file name inside the checkpoint directory");
      return "";
    }
    return string(Name);
  }
  /// Member \p Name, an unsigned integer of at most \p Max.
  uint64_t number(const char *Name, uint64_t Max = UINT64_MAX) {
    auto It = E.find(Name);
    if (It == E.end())
      bad(std::string("has no '") + Name + "'");
    else if (!It->is_number_unsigned())
      bad(std::string("'") + Name + "' is " + jsonKind(*It) + ", not an unsigned integer");
    else if (It->get<uint64_t>() > Max)
      bad(std::string("'") + Name + "' is " + std::to_string(It->get<uint64_t>()) + ", more than " +
          std::to_string(Max));
    else
      return It->get<uint64_t>();
    return 0;
  }
  /// Member crc32: an unsigned 32-bit integer.
  uint32_t crc() { return static_cast<uint32_t>(number("crc32", 0xffffffffu)); }

private:
  const Json &E;
  std::string At;
  std::vector<std::string> &Problems;
  bool Ok = true;
};

/// A record manifest.json lists, its fields checked.
struct ListedRecord {
  std::string At; ///< "<manifest>: chunks[3] ('key')", for messages
  std::string Key, File;
  uint64_t Offset = 0, Length = 0;
  uint32_t Crc = 0;
  bool Chunk = true;
};

/// The entries of the array \p Member ("chunks", "objects") of the
/// torch_dist manifest \p M; every bad entry is a problem and left out (its
/// key, when it has one, added to \p BadKeys).
std::vector<ListedRecord> listedRecords(const Json &M, const char *Member, const std::string &Path,
                                        std::vector<std::string> &Problems, std::set<std::string> &BadKeys);

} // namespace bridge

#endif
