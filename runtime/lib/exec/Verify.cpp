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
#include <unistd.h>

namespace bridge {
namespace {

std::string hex(uint32_t V) {
  char B[16];
  std::snprintf(B, sizeof B, "0x%08x", V);
  return B;
}

/// Reads [Offset, Offset + Length) of \p Path, or says why not.
bool readRange(const std::string &Path, uint64_t Offset, uint64_t Length, std::string &Out, std::string &Why) {
  int Fd = ::open(Path.c_str(), O_RDONLY | O_CLOEXEC);
  if (Fd < 0) {
    Why = std::strerror(errno);
    return false;
  }
  Out.resize(Length);
  uint64_t Done = 0;
  while (Done < Length) {
    ssize_t K = ::pread(Fd, Out.data() + Done, Length - Done, static_cast<off_t>(Offset + Done));
    if (K < 0 && errno == EINTR)
      continue;
    if (K <= 0) {
      Why = K < 0 ? std::strerror(errno) : "the file ends first";
      ::close(Fd);
      return false;
    }
    Done += static_cast<uint64_t>(K);
  }
  ::close(Fd);
  return true;
}

VerifyReport verifyTorchDist(const std::string &Dir) {
  VerifyReport R;
  std::string Iter = iterationDir(Dir);
  std::string ManifestPath = files::join(Iter, "manifest.json");
  if (!files::exists(ManifestPath))
    throw Error("error: " + Iter + " has no manifest.json (written by import and reshard since they take checksums)");
  Json M = readJsonFile(ManifestPath);
  TorchDistCheckpoint Ckpt(Iter); // .metadata and the files it names
  std::set<std::string> Listed;
  auto Check = [&](const Json &Rec, bool Chunk) {
    std::string Key = Rec.at("key").get<std::string>(), File = Rec.at("file").get<std::string>();
    std::string Where = files::join(Iter, File) + " at " + std::to_string(Rec.at("offset").get<uint64_t>()) + " ('" +
                        Key + "')";
    if (File.find('/') != std::string::npos || File == "..") {
      R.Problems.push_back(Where + ": the manifest names a file outside the checkpoint");
      return;
    }
    std::string Bytes, Why;
    if (!readRange(files::join(Iter, File), Rec.at("offset").get<uint64_t>(), Rec.at("length").get<uint64_t>(), Bytes,
                   Why)) {
      R.Problems.push_back(Where + ": cannot read the record: " + Why);
      return;
    }
    uint32_t Want = Rec.at("crc32").get<uint32_t>(), Got = 0;
    try {
      if (Chunk) {
        ZipArchive Zip(Bytes, Where);
        const ZipArchive::Entry *Data = nullptr;
        for (const ZipArchive::Entry &E : Zip.entries()) {
          std::string_view Payload = Zip.read(E); // checks the entry's own CRC-32
          if (E.Name.size() >= 7 && E.Name.compare(E.Name.size() - 7, 7, "/data/0") == 0) {
            Data = &E;
            Got = crc32(reinterpret_cast<const uint8_t *>(Payload.data()), Payload.size());
          }
        }
        if (!Data) {
          R.Problems.push_back(Where + ": the record holds no tensor data");
          return;
        }
      } else {
        Got = crc32(reinterpret_cast<const uint8_t *>(Bytes.data()), Bytes.size());
      }
    } catch (const Error &E) {
      R.Problems.push_back(E.what());
      return;
    }
    if (Got != Want)
      R.Problems.push_back(Where + ": CRC-32 " + hex(Got) + ", but " + hex(Want) + " when written");
    ++R.Checked;
    R.Bytes += Bytes.size();
    Listed.insert(Key);
  };
  for (const Json &C : M.at("chunks"))
    Check(C, true);
  for (const Json &O : M.at("objects"))
    Check(O, false);
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

} // namespace

VerifyReport runVerify(const std::string &Dir, const std::string &Against) {
  return Against.empty() ? verifyTorchDist(Dir) : compareHF(Dir, Against);
}

} // namespace bridge
