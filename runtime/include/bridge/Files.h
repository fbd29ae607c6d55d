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
#include <string>
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

} // namespace bridge::files

#endif
