//===- Verify.cpp - a written checkpoint re-read against its manifest ----===//
//
// torch_dist: every record manifest.json lists is read back where it lies,
// its zip entries' CRC-32 checked, and the CRC-32 of the tensor chunk (or of
// the whole record, for an object) compared with the one taken as it was
// written; every key of .metadata must be listed. Two HF checkpoints (an
// export and its source): the same tensors, names, dtypes, shapes and bytes.
//
//===----------------------------------------------------------------------===//
#include "Checkpoint.h"
#include "Resume.h"

#include "bridge/Convert.h"
#include "bridge/Files.h"
#include "bridge/Pickle.h"
#include "bridge/Safetensors.h"
#include "bridge/TorchDistReader.h"
#include "bridge/Unpickle.h"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <map>
#include <set>
#include <thread>
#include <unistd.h>

namespace bridge {
namespace {

std::string hex(uint32_t V) {
  char B[16];
  std::snprintf(B, sizeof B, "0x%08x", V);
  return B;
}

VerifyReport verifyTorchDist(const std::string &Dir) {
  VerifyReport R;
  std::string Iter = iterationDir(Dir);
  std::string ManifestPath = files::join(Iter, "manifest.json");
  if (!files::exists(ManifestPath))
    throw Error("error: " + Iter + " has no manifest.json (written by import and reshard since they take checksums)");
  Json M = readJsonFile(ManifestPath);
  TorchDistCheckpoint Ckpt(Iter); // .metadata and the files it names
  // Records grouped by file, each file mapped once and checked by a thread
  // of its own.
  struct Item {
    const Json *Rec;
    bool Chunk;
  };
  std::map<std::string, std::vector<Item>> ByFile;
  std::set<std::string> Listed;
  for (const Json &C : M.at("chunks"))
    ByFile[C.at("file").get<std::string>()].push_back({&C, true});
  for (const Json &O : M.at("objects"))
    ByFile[O.at("file").get<std::string>()].push_back({&O, false});
  struct Result {
    std::vector<std::string> Problems;
    uint64_t Checked = 0, Bytes = 0;
  };
  std::vector<std::pair<const std::string *, const std::vector<Item> *>> Work;
  for (auto &[File, Items] : ByFile)
    Work.push_back({&File, &Items});
  std::vector<Result> Results(Work.size());
  auto Check = [&](size_t I) {
    const std::string &File = *Work[I].first;
    Result &Out = Results[I];
    bool Outside = File.find('/') != std::string::npos || File == "..";
    for (const Item &It : *Work[I].second) {
      const Json &Rec = *It.Rec;
      std::string Key = Rec.at("key").get<std::string>();
      uint64_t Offset = Rec.at("offset").get<uint64_t>(), Length = Rec.at("length").get<uint64_t>();
      std::string Where = files::join(Iter, File) + " at " + std::to_string(Offset) + " ('" + Key + "')";
      if (Outside) {
        Out.Problems.push_back(Where + ": the manifest names a file outside the checkpoint");
        continue;
      }
      // The checkpoint's own mapping of the file (each mapped once).
      std::string Why;
      std::optional<uint32_t> Got;
      try {
        Got = recordCrc(Ckpt.recordView({File, Offset, Length}), Where, It.Chunk, Why);
      } catch (const Error &E) {
        Why = std::string("cannot read the record: ") + E.what();
      }
      if (!Got) {
        Out.Problems.push_back(Where + ": " + Why);
        continue;
      }
      uint32_t Want = Rec.at("crc32").get<uint32_t>();
      if (*Got != Want)
        Out.Problems.push_back(Where + ": CRC-32 " + hex(*Got) + ", but " + hex(Want) + " when written");
      ++Out.Checked;
      Out.Bytes += Length;
    }
  };
  std::vector<std::thread> Threads;
  for (size_t I = 0; I < Work.size(); ++I)
    Threads.emplace_back(Check, I);
  for (std::thread &T : Threads)
    T.join();
  for (const Result &Res : Results) {
    R.Problems.insert(R.Problems.end(), Res.Problems.begin(), Res.Problems.end());
    R.Checked += Res.Checked;
    R.Bytes += Res.Bytes;
  }
  for (auto &[File, Items] : ByFile)
    for (const Item &It : Items)
      Listed.insert(It.Rec->at("key").get<std::string>());
  for (const std::string &K : Ckpt.tensorKeys())
    if (!Listed.count(K))
      R.Problems.push_back(Iter + ": '" + K + "' is in .metadata but not in manifest.json");
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

/// An HF export against the checksums export took as it wrote.
VerifyReport verifyHF(const std::string &Dir) {
  VerifyReport R;
  std::string ManifestPath = files::join(Dir, "manifest.json");
  if (!files::exists(ManifestPath))
    throw Error("error: " + Dir + " has no manifest.json (export writes one); --against SOURCE compares it with its "
                "source instead");
  Json M = readJsonFile(ManifestPath);
  SafetensorsCheckpoint Ckpt(Dir); // headers, offsets and index checked
  const Json &Listed = M.at("tensors");
  for (const std::string &N : Ckpt.names()) {
    const TensorView *V = Ckpt.find(N);
    auto It = Listed.find(N);
    if (It == Listed.end()) {
      R.Problems.push_back(V->File + ": '" + N + "' is not in manifest.json");
      continue;
    }
    uint32_t Want = It->at("crc32").get<uint32_t>(), Got = crc32(V->Data, V->Bytes);
    if (Got != Want)
      R.Problems.push_back(V->File + ": '" + N + "': CRC-32 " + hex(Got) + ", but " + hex(Want) + " when written");
    ++R.Checked;
    R.Bytes += V->Bytes;
  }
  for (auto It = Listed.begin(); It != Listed.end(); ++It)
    if (!Ckpt.find(It.key()))
      R.Problems.push_back(Dir + ": '" + It.key() + "' of manifest.json is missing");
  return R;
}

/// A legacy checkpoint: each rank file's zip entries (their own CRC-32s)
/// and each tensor's storage against the manifest.
VerifyReport verifyLegacy(const std::string &Iter, const Json &M) {
  VerifyReport R;
  for (auto F = M.at("files").begin(); F != M.at("files").end(); ++F) {
    const std::string &Rel = F.key();
    std::string Path = files::join(Iter, Rel);
    if (Rel.find("..") != std::string::npos || Rel.empty() || Rel[0] == '/') {
      R.Problems.push_back(Path + ": the manifest names a file outside the checkpoint");
      continue;
    }
    files::MappedFile Map(Path);
    if (!Map.ok()) {
      R.Problems.push_back(Path + ": " + Map.why());
      continue;
    }
    try {
      ZipArchive Zip(Map.bytes(), Path);
      std::map<std::string, uint32_t> ByStorage; // "data/N" -> CRC-32 of its bytes
      for (const ZipArchive::Entry &E : Zip.entries()) {
        std::string_view Payload = Zip.read(E); // checks the entry's own CRC-32
        size_t Data = E.Name.find("/data/");
        if (Data != std::string::npos)
          ByStorage[E.Name.substr(Data + 1)] =
              crc32(reinterpret_cast<const uint8_t *>(Payload.data()), Payload.size());
      }
      for (auto T = F.value().begin(); T != F.value().end(); ++T) {
        auto Found = ByStorage.find(T->at("entry").get<std::string>());
        uint32_t Want = T->at("crc32").get<uint32_t>();
        if (Found == ByStorage.end())
          R.Problems.push_back(Path + ": '" + T.key() + "' has no storage entry");
        else if (Found->second != Want)
          R.Problems.push_back(Path + ": '" + T.key() + "': CRC-32 " + hex(Found->second) + ", but " + hex(Want) +
                               " when written");
        ++R.Checked;
      }
      R.Bytes += Map.size();
    } catch (const Error &E) {
      std::string What = E.what();
      R.Problems.push_back(What.compare(0, 7, "error: ") == 0 ? What.substr(7) : What);
    }
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
    if (M.contains("format") && M["format"] == "torch")
      return verifyLegacy(Iter, M);
  }
  return verifyTorchDist(Dir);
}

} // namespace bridge
