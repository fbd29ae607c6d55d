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
/// rm -rf of a directory that other processes may still be creating files in
/// by path (a failed multi-process run's output): it is renamed aside first,
/// so no entry can appear in it while it is emptied (which would leave it
/// behind, not empty). No error when absent.
void removeShared(const std::string &Path);
/// rename(2); throws bridge::Error.
void rename(const std::string &From, const std::string &To);
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

/// Writes all \p N bytes to \p Fd (at \p Offset, or at its current offset
/// when \p Offset is negative), retrying short writes and EINTR; throws
/// bridge::Error naming \p Path (a write of nothing is a full disk).
void writeAll(int Fd, int64_t Offset, const void *Data, uint64_t N, const std::string &Path);
/// Writes \p N bytes to \p Fd (at \p Offset, or at its current offset when
/// \p Offset is negative) and returns their CRC-32, taken as they are
/// written: piece by piece, so the kernel copies each piece while the
/// checksum has it in the CPU's cache (whole tensors at once read every
/// byte twice from memory, and a mapped source's pages twice through the
/// TLB). Throws bridge::Error naming \p Path.
uint32_t writeWithCrc(int Fd, int64_t Offset, const uint8_t *Data, uint64_t N, const std::string &Path);

/// Upper bounds on what the runtime reads of each kind of file into memory.
/// The real files are far smaller (the largest, DeepSeek-V3's bridge.json,
/// about 20 MB); a file beyond its limit is an error naming it and the limit.
inline constexpr uint64_t kMaxConfigBytes = uint64_t(64) << 20;     ///< config.json
inline constexpr uint64_t kMaxIndexBytes = uint64_t(256) << 20;     ///< model.safetensors.index.json
inline constexpr uint64_t kMaxSidecarBytes = uint64_t(1) << 30;     ///< bridge.json, manifest.json, resume.json
inline constexpr uint64_t kMaxHeaderBytes = uint64_t(256) << 20;    ///< a safetensors header
inline constexpr uint64_t kMaxMetadataBytes = uint64_t(2) << 30;    ///< a torch_dist .metadata pickle
inline constexpr uint64_t kMaxTokenizerBytes = uint64_t(1) << 30;   ///< each tokenizer file copied

/// Opens \p Path for reading without blocking (a FIFO does not stall the
/// open) and checks that it is a regular file, following links; its size in
/// \p Size. Throws bridge::Error naming the file (\p What says what it is:
/// "config.json", "the index") when it cannot be opened or is a FIFO, a
/// device or a directory.
int openRegularFile(const std::string &Path, const std::string &What, uint64_t &Size);
/// The whole of the regular file \p Path, which may hold at most \p Limit
/// bytes; throws bridge::Error naming the file and the limit otherwise.
std::string readRegularFile(const std::string &Path, uint64_t Limit, const std::string &What);
/// Copies the regular file \p From (at most \p Limit bytes) to \p To.
void copyRegularFile(const std::string &From, const std::string &To, uint64_t Limit, const std::string &What);

/// Whether a name read from a file (an index, bridge.json, a manifest, a
/// .metadata) is one plain entry of its directory: not empty, no '/', not
/// '.' or '..', no NUL or other control character, at most 255 bytes.
bool isPlainName(std::string_view Name);
/// \p Path with every link resolved (realpath(3)); "" when it does not exist.
std::string realPath(const std::string &Path);
/// Whether \p Path, links resolved, lies inside the directory \p Dir, or,
/// when \p Dir is a snapshot of the Hugging Face cache
/// (<repo>/snapshots/<revision>), inside that repository's blob store
/// (<repo>/blobs), where the cache's links lead.
bool resolvesInside(const std::string &Path, const std::string &Dir);

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
