//===- Verify.cpp - a written checkpoint re-read against its manifest ----===//
//
// torch_dist: manifest.json is checked as a whole first (every entry's
// fields and their types), then tied to .metadata (both must name the same
// records, each at the same place), then every record it lists is read back
// where it lies, inside its file, its zip entries' CRC-32 checked, and the
// CRC-32 of the tensor chunk (or of the whole record, for an object)
// compared with the one taken as it was written. Legacy (torch): every rank
// file of the directory listed, each one's pickle read through the
// restricted unpickler, its storage entries and tensors against the
// manifest. An HF export: its manifest's entries checked the same way, each
// tensor's CRC-32 against them. Two HF checkpoints (an export and its
// source): the same tensors, names, dtypes, shapes and bytes.
//
// A manifest is input like any other: a bad entry is a problem naming
// manifest.json, the entry and the field, never an abort.
//
//===----------------------------------------------------------------------===//
#include "Checkpoint.h"
#include "Resume.h"

#include "bridge/Convert.h"
#include "bridge/Files.h"
#include "bridge/Manifest.h"
#include "bridge/Pickle.h"
#include "bridge/Safetensors.h"
#include "bridge/TorchDistReader.h"
#include "bridge/Unpickle.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <map>
#include <set>
#include <thread>
#include <tuple>
#include <unistd.h>

namespace bridge {
namespace {

std::string hex(uint32_t V) {
  char B[16];
  std::snprintf(B, sizeof B, "0x%08x", V);
  return B;
}

/// An error's text without its "error: " prefix (a problem gets its own).
std::string problemText(const std::exception &E) {
  std::string What = E.what();
  return What.compare(0, 7, "error: ") == 0 ? What.substr(7) : What;
}

/// A record of .metadata's storage_data: key, chunk or byte object, place.
struct StoredRecord {
  std::string Key;
  bool Chunk = true;
  DistRecord Where;
};

/// Every record of .metadata's storage_data (TorchDistCheckpoint has
/// checked their form; a node not of it is passed over).
std::vector<StoredRecord> storedRecords(const TorchDistCheckpoint &Ckpt) {
  std::vector<StoredRecord> Out;
  const PyValue *SD = Ckpt.metadata().find("storage_data");
  if (!SD || !SD->is(PyValue::Kind::Dict))
    return Out;
  for (const PyValue::Entry &E : SD->Entries) {
    const PyValue *Fqn = E.first->find("fqn");
    const PyValue *Path = E.second->find("relative_path");
    const PyValue *Off = E.second->find("offset");
    const PyValue *Len = E.second->find("length");
    if (!Fqn || !Fqn->is(PyValue::Kind::Str) || !Path || !Path->is(PyValue::Kind::Str) || !Off ||
        !Off->is(PyValue::Kind::Int) || !Len || !Len->is(PyValue::Kind::Int) || Off->Int < 0 || Len->Int < 0)
      continue;
    const PyValue *ChunkOffset = E.first->find("offset"); // absent or None: a byte object
    Out.push_back({Fqn->Text,
                   ChunkOffset && !ChunkOffset->is(PyValue::Kind::None),
                   {Path->Text, static_cast<uint64_t>(Off->Int), static_cast<uint64_t>(Len->Int)}});
  }
  return Out;
}

std::string placeText(const std::string &File, uint64_t Offset, uint64_t Length) {
  return File + " at offset " + std::to_string(Offset) + ", length " + std::to_string(Length);
}

/// Runs \p Task(I) for I in [0, N) on a few threads; whatever a task throws
/// is caught and given to \p Failed(I, why).
template <typename TaskT, typename FailT> void forEachParallel(size_t N, TaskT Task, FailT Failed) {
  std::atomic<size_t> Next{0};
  auto Worker = [&] {
    for (size_t I; (I = Next.fetch_add(1)) < N;) {
      try {
        Task(I);
      } catch (const std::exception &E) {
        Failed(I, problemText(E));
      } catch (...) {
        Failed(I, "an unknown exception");
      }
    }
  };
  size_t Count = std::min<size_t>(N, std::max(1u, std::min(16u, std::thread::hardware_concurrency())));
  std::vector<std::thread> Threads;
  try {
    for (size_t T = 1; T < Count; ++T)
      Threads.emplace_back(Worker);
  } catch (const std::system_error &) {
    // Fewer threads than asked for: the ones started (and this one) do it all.
  }
  Worker();
  for (std::thread &T : Threads)
    T.join();
}

VerifyReport verifyTorchDist(const std::string &Dir) {
  VerifyReport R;
  std::string Iter = iterationDir(Dir);
  std::string ManifestPath = files::join(Iter, "manifest.json");
  if (!files::exists(ManifestPath))
    throw Error("error: " + Iter + " has no manifest.json (written by import and reshard since they take checksums)");
  Json M = readJsonFile(ManifestPath);
  if (!M.is_object())
    throw Error("error: " + ManifestPath + " is " + jsonKind(M) + ", not an object");
  std::set<std::string> BadKeys; // of entries that are problems already
  std::vector<ListedRecord> Listed = listedRecords(M, "chunks", ManifestPath, R.Problems, BadKeys);
  for (ListedRecord &O : listedRecords(M, "objects", ManifestPath, R.Problems, BadKeys))
    Listed.push_back(std::move(O));
  TorchDistCheckpoint Ckpt(Iter); // .metadata and the files it names

  // The manifest and .metadata name the same records, each at one place.
  std::string MetadataPath = files::join(Iter, ".metadata");
  using Place = std::tuple<std::string, std::string, uint64_t, uint64_t>; // key, file, offset, length
  std::map<Place, std::pair<const StoredRecord *, bool>> Stored;          // -> record, whether listed
  std::vector<StoredRecord> FromMetadata = storedRecords(Ckpt);
  for (const StoredRecord &S : FromMetadata)
    Stored.emplace(Place{S.Key, S.Where.File, S.Where.Offset, S.Where.Length}, std::make_pair(&S, false));
  for (const ListedRecord &L : Listed) {
    auto It = Stored.find(Place{L.Key, L.File, L.Offset, L.Length});
    if (It == Stored.end())
      R.Problems.push_back(L.At + ": " + placeText(L.File, L.Offset, L.Length) + " is not a record of .metadata");
    else if (It->second.first->Chunk != L.Chunk)
      R.Problems.push_back(L.At + ": " + placeText(L.File, L.Offset, L.Length) + " is a " +
                           (L.Chunk ? "byte object" : "tensor chunk") + " in .metadata, listed as a " +
                           (L.Chunk ? "tensor chunk" : "byte object"));
    else if (It->second.second)
      R.Problems.push_back(L.At + ": " + placeText(L.File, L.Offset, L.Length) + " is listed twice");
    else
      It->second.second = true;
  }
  for (const StoredRecord &S : FromMetadata) {
    auto It = Stored.find(Place{S.Key, S.Where.File, S.Where.Offset, S.Where.Length});
    if (It != Stored.end() && !It->second.second && It->second.first == &S && !BadKeys.count(S.Key))
      R.Problems.push_back(MetadataPath + ": " + (S.Chunk ? "tensor chunk" : "byte object") + " of '" + S.Key + "' (" +
                           placeText(S.Where.File, S.Where.Offset, S.Where.Length) + ") is not in manifest.json");
  }

  // Every listed record read back: records grouped by file, a few threads
  // taking one file at a time (each file mapped once, by the checkpoint).
  std::map<std::string, std::vector<const ListedRecord *>> ByFile;
  for (const ListedRecord &L : Listed)
    ByFile[L.File].push_back(&L);
  struct Result {
    std::vector<std::string> Problems;
    uint64_t Checked = 0, Bytes = 0;
  };
  std::vector<const std::vector<const ListedRecord *> *> Work;
  for (auto &[File, Records] : ByFile)
    Work.push_back(&Records);
  std::vector<Result> Results(Work.size());
  auto Check = [&](size_t I) {
    Result &Out = Results[I];
    const std::string &File = Work[I]->front()->File;
    std::string Path = files::join(Iter, File);
    uint64_t Size = 0;
    std::string Unreadable;
    try {
      ::close(files::openRegularFile(Path, "file", Size)); // no FIFO or device reaches the mapping
    } catch (const Error &E) {
      Unreadable = problemText(E);
    }
    for (const ListedRecord *L : *Work[I]) {
      std::string Where = Path + " at " + std::to_string(L->Offset) + " ('" + L->Key + "')";
      if (!Unreadable.empty()) {
        Out.Problems.push_back(Where + ": " + Unreadable);
        continue;
      }
      if (L->Offset > Size || L->Length > Size - L->Offset) {
        Out.Problems.push_back(Where + ": the record (length " + std::to_string(L->Length) +
                               ") runs past the end of the file (" + std::to_string(Size) + " bytes)");
        continue;
      }
      std::string Why;
      std::optional<uint32_t> Got;
      try {
        Got = recordCrc(Ckpt.recordView({L->File, L->Offset, L->Length}, L->Key), Where, L->Chunk, Why);
      } catch (const std::exception &E) {
        Why = "cannot read the record: " + problemText(E);
      }
      if (!Got) {
        Out.Problems.push_back(Where + ": " + Why);
        continue;
      }
      if (*Got != L->Crc)
        Out.Problems.push_back(Where + ": CRC-32 " + hex(*Got) + ", but " + hex(L->Crc) + " when written");
      ++Out.Checked;
      Out.Bytes += L->Length;
    }
  };
  forEachParallel(Work.size(), Check, [&](size_t I, const std::string &Why) {
    Results[I].Problems.push_back(files::join(Iter, Work[I]->front()->File) + ": " + Why);
  });
  for (const Result &Res : Results) {
    R.Problems.insert(R.Problems.end(), Res.Problems.begin(), Res.Problems.end());
    R.Checked += Res.Checked;
    R.Bytes += Res.Bytes;
  }
  return R;
}

VerifyReport compareHF(const std::string &Dir, const std::string &Against) {
  VerifyReport R;
  SafetensorsCheckpoint A(Dir), B(Against);
  std::vector<std::string> NA = A.names(), NB = B.names();
  std::set<std::string> SA(NA.begin(), NA.end()), SB(NB.begin(), NB.end());
  for (const std::string &N : NB)
    if (!SA.count(N))
      R.Problems.push_back(Dir + ": '" + N + "' of " + Against + " is missing");
  for (const std::string &N : NA) {
    if (!SB.count(N)) {
      R.Problems.push_back(Dir + ": '" + N + "' is not in " + Against);
      continue;
    }
    const TensorView *X = A.find(N), *Y = B.find(N);
    if (X->Type != Y->Type || X->Shape != Y->Shape)
      R.Problems.push_back(X->File + ": '" + N + "' differs in dtype or shape from " + Y->File);
    else if (X->Bytes != Y->Bytes || std::memcmp(X->Data, Y->Data, X->Bytes) != 0)
      R.Problems.push_back(X->File + ": '" + N + "' differs in its bytes from " + Y->File);
    ++R.Checked;
    R.Bytes += X->Bytes;
  }
  return R;
}

std::string baseName(const std::string &Path) {
  size_t Slash = Path.find_last_of('/');
  return Slash == std::string::npos ? Path : Path.substr(Slash + 1);
}

/// An HF export against the checksums export took as it wrote.
VerifyReport verifyHF(const std::string &Dir) {
  VerifyReport R;
  std::string ManifestPath = files::join(Dir, "manifest.json");
  if (!files::exists(ManifestPath))
    throw Error("error: " + Dir + " has no manifest.json (export writes one); --against SOURCE compares it with its "
                "source instead");
  Json M = readJsonFile(ManifestPath);
  if (!M.is_object())
    throw Error("error: " + ManifestPath + " is " + jsonKind(M) + ", not an object");
  auto Tensors = M.find("tensors");
  if (Tensors == M.end() || !Tensors->is_object())
    throw Error("error: " + ManifestPath + ": 'tensors' is " +
                (Tensors == M.end() ? std::string("missing") : jsonKind(*Tensors)) + ", not an object of tensors");
  // Each entry: {"file": a plain name, "crc32": an unsigned 32-bit integer}.
  struct Entry {
    std::string File;
    uint32_t Crc = 0;
    bool Ok = false;
  };
  std::map<std::string, Entry> Listed;
  for (auto It = Tensors->begin(); It != Tensors->end(); ++It) {
    Entry &E = Listed[It.key()];
    std::string At = ManifestPath + ": tensors['" + It.key() + "']";
    if (!It->is_object()) {
      R.Problems.push_back(At + " is " + jsonKind(*It) + ", not an object");
      continue;
    }
    ManifestEntry C(*It, At, R.Problems);
    E.File = C.fileName("file");
    E.Crc = C.crc();
    E.Ok = C.ok();
  }
  SafetensorsCheckpoint Ckpt(Dir); // headers, offsets and index checked
  for (const std::string &N : Ckpt.names()) {
    const TensorView *V = Ckpt.find(N);
    auto It = Listed.find(N);
    if (It == Listed.end()) {
      R.Problems.push_back(V->File + ": '" + N + "' is not in manifest.json");
      continue;
    }
    if (!It->second.Ok)
      continue; // its entry is a problem already
    if (It->second.File != baseName(V->File))
      R.Problems.push_back(ManifestPath + ": tensors['" + N + "'] names file '" + It->second.File + "', but '" + N +
                           "' is in " + V->File);
    uint32_t Want = It->second.Crc, Got = crc32(V->Data, V->Bytes);
    if (Got != Want)
      R.Problems.push_back(V->File + ": '" + N + "': CRC-32 " + hex(Got) + ", but " + hex(Want) + " when written");
    ++R.Checked;
    R.Bytes += V->Bytes;
  }
  for (auto &[N, E] : Listed)
    if (!Ckpt.find(N))
      R.Problems.push_back(Dir + ": '" + N + "' of manifest.json is missing");
  return R;
}

/// "'a', 'b', 'c' and 7 more".
std::string nameList(const std::vector<std::string> &Names) {
  std::string Out;
  for (size_t I = 0; I < Names.size() && I < 4; ++I)
    Out += (I ? ", '" : "'") + Names[I] + "'";
  if (Names.size() > 4)
    Out += " and " + std::to_string(Names.size() - 4) + " more";
  return Out;
}

/// Whether \p Rel is where a legacy rank file lies: "mp_rank_<...>/model_optim_rng.pt".
bool isRankFilePath(const std::string &Rel) {
  size_t Slash = Rel.find('/');
  if (Slash == std::string::npos)
    return false;
  std::string RankDir = Rel.substr(0, Slash);
  return files::isPlainName(RankDir) && RankDir.compare(0, 8, "mp_rank_") == 0 &&
         Rel.compare(Slash + 1, std::string::npos, "model_optim_rng.pt") == 0;
}

/// One rank file of a legacy checkpoint: its zip entries (their own
/// CRC-32s), its pickle (through the restricted unpickler, as reshard reads
/// it), and its storage entries and tensors against the manifest's \p Tensors.
void verifyRankFile(const std::string &Path, const std::string &At, const Json &Tensors, VerifyReport &R) {
  // The manifest's entries: tensor name -> (storage entry "data/N", CRC-32).
  std::map<std::string, std::pair<std::string, uint32_t>> Listed;
  std::set<std::string> ListedEntries;
  for (auto T = Tensors.begin(); T != Tensors.end(); ++T) {
    std::string TAt = At + "['" + T.key() + "']";
    if (!T->is_object()) {
      R.Problems.push_back(TAt + " is " + jsonKind(*T) + ", not an object");
      continue;
    }
    ManifestEntry C(*T, TAt, R.Problems);
    std::string Entry = C.string("entry");
    uint32_t Crc = C.crc();
    if (!C.ok())
      continue;
    if (!ListedEntries.insert(Entry).second)
      R.Problems.push_back(TAt + ": storage entry '" + Entry + "' is listed for another tensor too");
    Listed[T.key()] = {Entry, Crc};
  }

  files::MappedFile Map(Path);
  if (!Map.ok()) {
    R.Problems.push_back(Path + ": " + Map.why());
    return;
  }
  ZipArchive Zip(Map.bytes(), Path);
  std::map<std::string, uint32_t> ByStorage; // "data/N" -> CRC-32 of its bytes
  for (const ZipArchive::Entry &E : Zip.entries()) {
    std::string_view Payload = Zip.read(E); // checks the entry's own CRC-32
    size_t Data = E.Name.find("/data/");
    if (Data != std::string::npos)
      ByStorage[E.Name.substr(Data + 1)] = crc32(reinterpret_cast<const uint8_t *>(Payload.data()), Payload.size());
  }
  for (auto &[Name, Want] : Listed) {
    auto Found = ByStorage.find(Want.first);
    if (Found == ByStorage.end())
      R.Problems.push_back(Path + ": '" + Name + "' has no storage entry");
    else if (Found->second != Want.second)
      R.Problems.push_back(Path + ": '" + Name + "': CRC-32 " + hex(Found->second) + ", but " + hex(Want.second) +
                           " when written");
    ++R.Checked;
  }
  std::vector<std::string> Unlisted;
  for (auto &[Entry, Crc] : ByStorage)
    if (!ListedEntries.count(Entry))
      Unlisted.push_back(Entry);
  if (!Unlisted.empty())
    R.Problems.push_back(Path + ": storage entries not in manifest.json: " + nameList(Unlisted));
  R.Bytes += Map.size();

  // The pickle, read as reshard reads it: a forbidden global is a problem,
  // and every tensor of its 'model' dict must be one the manifest lists.
  PyValuePtr Root = readTorchSave(Map.bytes(), Path, LegacyCheckpointGlobals, /*Borrow=*/true);
  const PyValue *Model = Root->find("model");
  if (!Model || !Model->is(PyValue::Kind::Dict)) {
    R.Problems.push_back(Path + ": has no 'model' dict: not a Megatron-LM legacy checkpoint file");
    return;
  }
  Unlisted.clear();
  for (const PyValue::Entry &E : Model->Entries)
    if (E.second->is(PyValue::Kind::Tensor) && (!E.first->is(PyValue::Kind::Str) || !Listed.count(E.first->Text)))
      Unlisted.push_back(E.first->is(PyValue::Kind::Str) ? E.first->Text : E.first->repr(80));
  if (!Unlisted.empty())
    R.Problems.push_back(Path + ": tensors of 'model' not in manifest.json: " + nameList(Unlisted));
}

/// A legacy checkpoint: every rank file of the directory listed by the
/// manifest, and each one checked by verifyRankFile.
VerifyReport verifyLegacy(const std::string &Iter, const Json &M) {
  VerifyReport R;
  std::string ManifestPath = files::join(Iter, "manifest.json");
  auto FilesIt = M.find("files");
  if (FilesIt == M.end() || !FilesIt->is_object())
    throw Error("error: " + ManifestPath + ": 'files' is " +
                (FilesIt == M.end() ? std::string("missing") : jsonKind(*FilesIt)) + ", not an object of rank files");
  if (FilesIt->empty())
    R.Problems.push_back(ManifestPath + ": 'files' lists no rank files");
  std::set<std::string> ListedFiles;
  for (auto F = FilesIt->begin(); F != FilesIt->end(); ++F) {
    const std::string &Rel = F.key();
    std::string At = ManifestPath + ": files['" + Rel + "']";
    if (!isRankFilePath(Rel)) {
      R.Problems.push_back(At + ": not a rank file inside the checkpoint (mp_rank_*/model_optim_rng.pt)");
      continue;
    }
    ListedFiles.insert(Rel);
    if (!F->is_object()) {
      R.Problems.push_back(At + " is " + jsonKind(*F) + ", not an object of tensors");
      continue;
    }
    if (F->empty())
      R.Problems.push_back(At + " lists no tensors");
    try {
      verifyRankFile(files::join(Iter, Rel), At, *F, R);
    } catch (const std::exception &E) {
      R.Problems.push_back(problemText(E));
    }
  }
  for (const std::string &Name : files::list(Iter)) {
    std::string Rel = Name + "/model_optim_rng.pt";
    if (isRankFilePath(Rel) && !ListedFiles.count(Rel) && files::exists(files::join(Iter, Rel)))
      R.Problems.push_back(files::join(Iter, Rel) + ": a rank file that manifest.json does not list");
  }
  return R;
}

} // namespace

VerifyReport runVerify(const std::string &Dir, const std::string &Against) {
  if (!Against.empty())
    return compareHF(Dir, Against);
  if (files::exists(files::join(Dir, "model.safetensors")) ||
      files::exists(files::join(Dir, "model.safetensors.index.json")))
    return verifyHF(Dir);
  std::string Iter = iterationDir(Dir);
  std::string ManifestPath = files::join(Iter, "manifest.json");
  if (files::exists(ManifestPath)) {
    Json M = readJsonFile(ManifestPath);
    if (M.is_object() && M.contains("format") && M["format"] == "torch")
      return verifyLegacy(Iter, M);
  }
  return verifyTorchDist(Dir);
}

} // namespace bridge
