//===- OutputDir.h - where a command may write, and the final rename -*- C++ -*-===//
//
// Every command that writes a checkpoint (import, reshard, export) builds it
// in `<out>.partial-<pid>` beside --out and renames it into place when it is
// complete. This is the one place that decides whether --out may be written
// or replaced, and that makes the final rename, so that neither a mistyped
// --out nor a second run can destroy anything that is not this tool's output.
//
//===----------------------------------------------------------------------===//
#ifndef BRIDGE_OUTPUTDIR_H
#define BRIDGE_OUTPUTDIR_H

#include <cstdint>
#include <string>
#include <vector>

namespace bridge {

/// Whether \p Dir looks like what this tool writes: a checkpoint (its
/// tracker file latest_checkpointed_iteration.txt), an HF export (a
/// manifest.json saying "format": "safetensors" beside a config.json), or an
/// empty directory.
bool looksLikeOutput(const std::string &Dir);

/// \p Path made absolute with links resolved as far as it exists (the part
/// that does not exist yet is appended as written, '.' and '..' folded).
std::string resolvedPath(const std::string &Path);

class OutputDir {
public:
  /// Checks --out \p Out before anything is written, throwing bridge::Error:
  /// it may not be, contain or lie inside any of \p Inputs (the checkpoints
  /// read); when it exists it must look like an output of this tool, and is
  /// replaced only with \p Overwrite, never when it is the root, the home
  /// directory or the working directory or one above it.
  OutputDir(std::string Out, const std::vector<std::string> &Inputs, bool Overwrite);

  const std::string &path() const { return Out; }
  /// `<out>.partial-<pid>`, where the output is built.
  std::string partialPath() const;

  /// Renames the finished \p Partial to --out without ever replacing
  /// something this command did not check: when --out did not exist at the
  /// start, a directory that appeared there meanwhile (another run) is an
  /// error and is left alone; when it did (--overwrite), it is moved aside,
  /// checked to be the directory seen at the start, and removed only after
  /// the rename.
  void commit(const std::string &Partial) const;

private:
  std::string Out;
  bool Existed = false;
  uint64_t Device = 0, Inode = 0; ///< of --out at the start, when it existed
};

} // namespace bridge

#endif
