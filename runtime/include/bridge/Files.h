//===- Files.h - the file-system operations the runtime needs ----*- C++ -*-===//
//
// POSIX-based on purpose: libtorch.so exports its own std::filesystem
// symbols, and calls bound to them crash (observed: remove_all), so the
// executor, which links libtorch, must not use std::filesystem.
//
//===----------------------------------------------------------------------===//
#ifndef BRIDGE_FILES_H
#define BRIDGE_FILES_H

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace bridge::files {

bool exists(const std::string &Path);
bool isDirectory(const std::string &Path);
/// mkdir -p; throws bridge::Error.
void makeDirs(const std::string &Path);
/// rm -rf; no error when absent.
void removeAll(const std::string &Path);
/// rename(2); throws bridge::Error.
void rename(const std::string &From, const std::string &To);
/// Copies a regular file; throws bridge::Error.
void copyFile(const std::string &From, const std::string &To);
/// Writes \p Bytes to \p Path; throws bridge::Error.
void writeFile(const std::string &Path, const std::string &Bytes);
std::string join(const std::string &A, const std::string &B);
/// The names in a directory (not . or ..), sorted; throws bridge::Error.
std::vector<std::string> list(const std::string &Dir);
/// Size and modification time (ns) of a file, following links; false when
/// it cannot be read.
bool stat(const std::string &Path, uint64_t &Size, int64_t &ModifiedNs);
/// A full disk, for tests: with BRIDGE_FAULT_DISK_FULL_AFTER=N set, a write
/// reaching past byte N of its file fails with ENOSPC (throws bridge::Error
/// naming \p Path) as a real one would.
void injectedDiskFull(uint64_t WriteEnd, const std::string &Path);
/// The same for a write of \p N bytes at the current offset of \p Fd.
void injectedDiskFullAppend(int Fd, size_t N, const std::string &Path);

/// A file mapped read-only. When it cannot be, ok() is false and why() says
/// what failed ("cannot open: ...", "cannot map: ..."); an empty file maps
/// to nothing and is ok.
class MappedFile {
public:
  explicit MappedFile(const std::string &Path);
  ~MappedFile();
  MappedFile(const MappedFile &) = delete;
  MappedFile &operator=(const MappedFile &) = delete;
  bool ok() const { return Why.empty(); }
  const std::string &why() const { return Why; }
  size_t size() const { return Size; }
  std::string_view bytes() const { return {static_cast<const char *>(Data), Size}; }
  /// [Offset, Offset + Length), or nullopt when the file ends first.
  std::optional<std::string_view> range(uint64_t Offset, uint64_t Length) const;

private:
  void *Data = nullptr;
  size_t Size = 0;
  std::string Why;
};

} // namespace bridge::files

#endif
