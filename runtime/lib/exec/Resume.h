//===- Resume.h - finishing an interrupted import -----------------*- C++ -*-===//
//
// An import writes its output in `<out>.partial-<pid>`: resume.json (what is
// being converted: source files, mapping, layout, plan), the .distcp files,
// and beside each a journal, a line per record once its bytes are written.
// `--resume` takes that directory over when it describes the same import,
// re-reads every journaled record, keeps those whose CRC-32 still matches,
// and converts only the tensors not wholly kept. Private to runtime/lib/exec.
//
//===----------------------------------------------------------------------===//
#ifndef BRIDGE_LIB_EXEC_RESUME_H
#define BRIDGE_LIB_EXEC_RESUME_H

#include "bridge/Config.h"
#include "bridge/Convert.h"
#include "bridge/DType.h"
#include "bridge/Plan.h"

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace bridge {

/// The CRC-32 a record's bytes carry (of the tensor chunk of a torch.save
/// record, whose zip entries' own CRC-32s are checked on the way; of the
/// whole record for an object), or nullopt and why not (naming \p Where).
/// One pass over the bytes.
std::optional<uint32_t> recordCrc(std::string_view Record, const std::string &Where, bool Chunk, std::string &Why);

/// A record an interrupted run left, as its journal names it.
struct JournaledRecord {
  std::string Key;
  bool Object = false; ///< a byte object (extra state), else a tensor chunk
  DType Type = DType::U8;
  std::vector<int64_t> Shape, Offsets, Sizes; ///< the global shape; the chunk's place
  std::string File;
  uint64_t Offset = 0, Length = 0;
  uint32_t Crc = 0;
};

struct Journals {
  std::vector<JournaledRecord> Kept; ///< verified; one per chunk or object
  unsigned NextFile = 0;             ///< the first k not used by __<rank>_<k>.distcp
  size_t Rejected = 0;               ///< lines whose record is gone or changed
};

/// Reads the journals of process \p Rank's files in \p Iter and checks each
/// record they name against its CRC-32.
Journals readJournals(const std::string &Iter, int Rank);

/// \p Kept as TorchDistWriter::records() text, for addRecords().
std::string recordsJson(const std::vector<const JournaledRecord *> &Kept);

/// What an import is, for resume.json: the command, mapping, format, layer
/// spec, layout, number of processes, the source directory with each file's
/// size and modification time, and a checksum of the plan.
Json resumeFingerprint(const std::string &Command, const std::string &Mapping, const std::string &Format,
                       bool LocalSpec, const Layout &Par, int Processes, const std::string &SourceDir, const Plan &P);

/// The `<Out>.partial-*` directories beside \p Out.
std::vector<std::string> partialsOf(const std::string &Out);

/// Takes over the interrupted import of \p Out described by \p Now: returns
/// its partial directory renamed to \p Tmp, or "" when there is none. Throws
/// when there are several, when its process still runs, or when it was
/// another import (naming what differs).
std::string takeOverPartial(const std::string &Out, const std::string &Tmp, const Json &Now);

/// Removes the journals and resume.json of a finished output.
void removeResumeFiles(const std::string &Tmp, const std::string &Iter);

} // namespace bridge

#endif
