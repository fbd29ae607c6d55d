//===- Safetensors.cpp - safetensors reader and writer ---------------------===//
#include "bridge/Safetensors.h"
#include "bridge/Files.h"
#include "bridge/Pickle.h"

#include "bridge/Error.h"
#include "bridge/StrictJson.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <set>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace bridge {

int64_t TensorView::numel() const {
  int64_t N = 1;
  for (int64_t D : Shape)
    N *= D;
  return N;
}

namespace {

[[noreturn]] void fail(const std::string &File, const std::string &Msg) {
  throw Error("error: " + File + ": " + Msg);
}

} // namespace

SafetensorsFile::SafetensorsFile(const std::string &P) : Path(P) {
  uint64_t FileSize = 0;
  int FD = files::openRegularFile(Path, "the safetensors file", FileSize);
  Size = static_cast<size_t>(FileSize);
  if (Size < 8) {
    ::close(FD);
    fail(Path, "truncated: " + std::to_string(Size) + " bytes, shorter than the 8-byte header length");
  }
  Map = ::mmap(nullptr, Size, PROT_READ, MAP_PRIVATE, FD, 0);
  ::close(FD);
  if (Map == MAP_FAILED) {
    Map = nullptr;
    fail(Path, std::string("cannot map: ") + std::strerror(errno));
  }
  // A file refused below is unmapped here: no destructor runs for it.
  struct Release {
    SafetensorsFile &F;
    bool Keep = false;
    ~Release() {
      if (Keep)
        return;
      ::munmap(F.Map, F.Size);
      F.Map = nullptr;
    }
  } Guard{*this};
  const uint8_t *Base = static_cast<const uint8_t *>(Map);
  uint64_t HeaderLen = 0;
  for (int I = 7; I >= 0; --I)
    HeaderLen = (HeaderLen << 8) | Base[I];
  if (HeaderLen > Size - 8)
    fail(Path, "header length " + std::to_string(HeaderLen) + " runs past the end of the file (" +
                   std::to_string(Size) + " bytes)");
  if (HeaderLen > files::kMaxHeaderBytes)
    fail(Path, "the header is " + std::to_string(HeaderLen) + " bytes; at most " +
                   std::to_string(files::kMaxHeaderBytes >> 20) + " MiB are read");
  std::string HeaderText(reinterpret_cast<const char *>(Base + 8), HeaderLen);
  nlohmann::json Header = parseJson<nlohmann::json>(HeaderText, Path, "the header");
  if (!Header.is_object())
    fail(Path, "the header is not a JSON object");
  const uint8_t *Data = Base + 8 + HeaderLen;
  size_t DataSize = Size - 8 - HeaderLen;
  std::vector<std::pair<size_t, size_t>> Ranges;
  for (auto It = Header.begin(); It != Header.end(); ++It) {
    const std::string &Name = It.key();
    if (Name == "__metadata__") {
      if (!It->is_object())
        fail(Path, "__metadata__ is not an object");
      for (auto M = It->begin(); M != It->end(); ++M) {
        if (!M->is_string())
          fail(Path, "__metadata__ value of '" + M.key() + "' is not a string");
        Metadata[M.key()] = M->get<std::string>();
      }
      continue;
    }
    const nlohmann::json &E = *It;
    if (!E.is_object() || !E.contains("dtype") || !E.contains("shape") || !E.contains("data_offsets"))
      fail(Path, "tensor '" + Name + "' lacks dtype, shape or data_offsets");
    if (!E["dtype"].is_string())
      fail(Path, "tensor '" + Name + "' has a non-string dtype");
    auto T = dtypeFromSafetensors(E["dtype"].get<std::string>());
    if (!T)
      fail(Path, "tensor '" + Name + "' has unknown dtype '" + E["dtype"].get<std::string>() + "'");
    TensorView V;
    V.Name = Name;
    V.Type = *T;
    V.File = Path;
    if (!E["shape"].is_array())
      fail(Path, "tensor '" + Name + "' has a shape that is not a list");
    __int128 Numel = 1;
    for (auto &D : E["shape"]) {
      if (!D.is_number_unsigned())
        fail(Path, "tensor '" + Name + "' has a negative or non-integer dimension");
      V.Shape.push_back(D.get<int64_t>());
      Numel *= D.get<uint64_t>();
      if (Numel > (__int128(1) << 62))
        fail(Path, "tensor '" + Name + "' is impossibly large");
    }
    const nlohmann::json &Off = E["data_offsets"];
    if (!Off.is_array() || Off.size() != 2 || !Off[0].is_number_unsigned() || !Off[1].is_number_unsigned())
      fail(Path, "tensor '" + Name + "' has malformed data_offsets");
    uint64_t Begin = Off[0].get<uint64_t>(), End = Off[1].get<uint64_t>();
    if (Begin > End || End > DataSize)
      fail(Path, "tensor '" + Name + "' has data_offsets [" + std::to_string(Begin) + ", " + std::to_string(End) +
                     "] outside the data area of " + std::to_string(DataSize) + " bytes");
    uint64_t Expected = static_cast<uint64_t>(Numel) * dtypeSize(V.Type);
    if (End - Begin != Expected)
      fail(Path, "tensor '" + Name + "' holds " + std::to_string(End - Begin) + " bytes but its dtype and shape need " +
                     std::to_string(Expected));
    V.Data = Data + Begin;
    V.Bytes = End - Begin;
    Ranges.push_back({Begin, End});
    Tensors.emplace(Name, std::move(V));
  }
  std::sort(Ranges.begin(), Ranges.end());
  for (size_t I = 1; I < Ranges.size(); ++I)
    if (Ranges[I].first < Ranges[I - 1].second)
      fail(Path, "two tensors overlap at bytes [" + std::to_string(Ranges[I].first) + ", " +
                     std::to_string(Ranges[I - 1].second) + ") of the data area");
  Guard.Keep = true;
}

SafetensorsFile::~SafetensorsFile() {
  if (Map)
    ::munmap(Map, Size);
}

SafetensorsCheckpoint::SafetensorsCheckpoint(const std::string &Dir) {
  std::string Index = Dir + "/model.safetensors.index.json";
  struct stat St;
  std::vector<std::string> Shards;
  std::map<std::string, std::string> WeightMap;
  if (::stat(Index.c_str(), &St) == 0) {
    Sharded = true;
    nlohmann::json J =
        parseJson<nlohmann::json>(files::readRegularFile(Index, files::kMaxIndexBytes, "the index"), Index, "the index");
    if (!J.is_object() || !J.contains("weight_map") || !J["weight_map"].is_object())
      fail(Index, "has no weight_map object");
    std::set<std::string> Seen;
    for (auto It = J["weight_map"].begin(); It != J["weight_map"].end(); ++It) {
      if (!It->is_string())
        fail(Index, "weight_map entry '" + It.key() + "' is not a file name");
      std::string F = It->get<std::string>();
      if (!files::isPlainName(F))
        fail(Index, "weight_map entry '" + It.key() + "' names '" + F + "', outside the checkpoint directory");
      WeightMap[It.key()] = F;
      if (Seen.insert(F).second)
        Shards.push_back(F);
    }
  } else if (::stat((Dir + "/model.safetensors").c_str(), &St) == 0) {
    Shards.push_back("model.safetensors");
  } else {
    fail(Dir, "has neither model.safetensors nor model.safetensors.index.json");
  }
  std::sort(Shards.begin(), Shards.end());
  for (const std::string &S : Shards) {
    std::string P = Dir + "/" + S;
    // A symlink may not lead out of the checkpoint directory (or, in the
    // Hugging Face cache, out of the repository's blob store).
    if (!files::resolvesInside(P, Dir) && ::lstat(P.c_str(), &St) == 0)
      fail(P, "resolves outside the checkpoint directory " + Dir);
    Files.push_back(std::make_unique<SafetensorsFile>(P));
    for (auto &[Name, View] : Files.back()->tensors()) {
      if (ByName.count(Name))
        fail(P, "tensor '" + Name + "' is also in " + FileOf[Name]);
      if (Sharded) {
        auto W = WeightMap.find(Name);
        if (W == WeightMap.end())
          fail(P, "tensor '" + Name + "' is not listed in model.safetensors.index.json");
        if (W->second != S)
          fail(P, "tensor '" + Name + "' is listed in the index under '" + W->second + "'");
      }
      ByName[Name] = &View;
      FileOf[Name] = S;
    }
  }
  for (auto &[Name, F] : WeightMap)
    if (!ByName.count(Name))
      fail(Dir + "/" + F, "tensor '" + Name + "' is listed in the index but missing from the file");
}

const TensorView *SafetensorsCheckpoint::find(const std::string &Name) const {
  auto It = ByName.find(Name);
  return It == ByName.end() ? nullptr : It->second;
}

void SafetensorsCheckpoint::add(TensorView V, std::shared_ptr<const void> Owner) {
  if (ByName.count(V.Name))
    throw Error("error: internal: tensor '" + V.Name + "' added twice");
  std::string Name = V.Name, File = V.File;
  const TensorView &Kept = Added.emplace(Name, std::move(V)).first->second;
  ByName[Name] = &Kept;
  FileOf[Name] = File;
  Owners.push_back(std::move(Owner));
}

std::vector<std::string> SafetensorsCheckpoint::names() const {
  std::vector<std::string> N;
  for (auto &[K, _] : ByName)
    N.push_back(K);
  return N;
}

namespace {
/// The header text of a file holding \p Layouts (by name, as written: name
/// order), padded so tensors start 8-byte aligned, and each tensor's offset
/// from the start of the data.
std::string safetensorsHeader(const std::map<std::string, const TensorLayout *> &Layouts,
                              std::map<std::string, uint64_t> &Offsets, uint64_t &DataBytes,
                              const std::map<std::string, std::string> &Metadata = {{"format", "pt"}}) {
  nlohmann::ordered_json Header = nlohmann::ordered_json::object();
  if (!Metadata.empty())
    Header["__metadata__"] = Metadata;
  uint64_t Offset = 0;
  for (auto &[Name, L] : Layouts) {
    uint64_t N = dtypeSize(L->Type);
    for (int64_t D : L->Shape)
      N *= static_cast<uint64_t>(D);
    Header[Name] = {{"dtype", std::string(safetensorsName(L->Type))},
                    {"shape", L->Shape},
                    {"data_offsets", {Offset, Offset + N}}};
    Offsets[Name] = Offset;
    Offset += N;
  }
  DataBytes = Offset;
  std::string Text = Header.dump();
  while ((8 + Text.size()) % 8 != 0)
    Text += ' ';
  return Text;
}
} // namespace

void prefetch(const TensorView &V) {
  if (!V.Data || !V.Bytes)
    return;
  static const uintptr_t Page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  uintptr_t Begin = reinterpret_cast<uintptr_t>(V.Data) & ~(Page - 1);
  uintptr_t End = reinterpret_cast<uintptr_t>(V.Data) + V.Bytes;
  ::madvise(reinterpret_cast<void *>(Begin), End - Begin, MADV_WILLNEED);
}

void writeSafetensors(const std::string &Path, const std::vector<const TensorToWrite *> &Tensors,
                      const std::map<std::string, std::string> &Metadata) {
  std::vector<const TensorToWrite *> Sorted = Tensors;
  std::sort(Sorted.begin(), Sorted.end(), [](auto *A, auto *B) { return A->Name < B->Name; });
  std::vector<TensorLayout> Storage;
  Storage.reserve(Sorted.size());
  std::map<std::string, const TensorLayout *> Layouts;
  for (const TensorToWrite *T : Sorted) {
    int64_t Numel = 1;
    for (int64_t D : T->Shape)
      Numel *= D;
    if (static_cast<uint64_t>(Numel) * dtypeSize(T->Type) != T->size())
      throw Error("error: internal: tensor '" + T->Name + "' has " + std::to_string(T->size()) +
                  " bytes for its shape");
    Storage.push_back({T->Type, T->Shape});
    Layouts[T->Name] = &Storage.back();
  }
  std::map<std::string, uint64_t> Offsets;
  uint64_t DataBytes = 0;
  std::string Text = safetensorsHeader(Layouts, Offsets, DataBytes, Metadata);
  std::string Tmp = Path + ".tmp";
  FILE *F = std::fopen(Tmp.c_str(), "wb");
  if (!F)
    throw Error("error: cannot write " + Tmp + ": " + std::strerror(errno));
  uint8_t Len[8];
  for (int I = 0; I < 8; ++I)
    Len[I] = static_cast<uint8_t>(static_cast<uint64_t>(Text.size()) >> (8 * I));
  bool OK = std::fwrite(Len, 1, 8, F) == 8 && std::fwrite(Text.data(), 1, Text.size(), F) == Text.size();
  for (const TensorToWrite *T : Sorted)
    OK = OK && std::fwrite(T->data(), 1, T->size(), F) == T->size();
  OK = (std::fclose(F) == 0) && OK;
  if (!OK) {
    std::remove(Tmp.c_str());
    throw Error("error: writing " + Path + " failed: " + std::strerror(errno));
  }
  if (std::rename(Tmp.c_str(), Path.c_str()) != 0)
    throw Error("error: cannot rename " + Tmp + " to " + Path + ": " + std::strerror(errno));
}

struct SafetensorsWriter::Laid {
  std::string Path, Tmp;
  int Fd = -1;
  uint64_t DataStart = 0;
  std::map<std::string, uint64_t> Offsets;
  std::map<std::string, TensorLayout> Layouts;
};

SafetensorsWriter::SafetensorsWriter(std::string D, std::map<std::string, std::string> F, bool WI,
                                     std::map<std::string, TensorLayout> Known, unsigned NumThreads,
                                     uint64_t MaxPendingBytes)
    : Dir(std::move(D)), FileOf(std::move(F)), WriteIndex(WI), MaxPending(MaxPendingBytes) {
  std::map<std::string, std::vector<std::string>> Names;
  for (auto &[Name, File] : FileOf) {
    // Every file is written in Dir itself, whatever a sidecar claimed.
    if (!files::isPlainName(File))
      throw Error("error: internal: '" + Name + "' would be written to '" + File + "', outside " + Dir);
    ++Remaining[File];
    Names[File].push_back(Name);
  }
  try {
    for (auto &[File, Members] : Names) {
      std::map<std::string, const TensorLayout *> Layouts;
      for (const std::string &N : Members)
        if (auto It = Known.find(N); It != Known.end())
          Layouts[N] = &It->second;
      if (Layouts.size() != Members.size())
        continue; // held in memory until complete
      auto L = std::make_unique<Laid>();
      uint64_t DataBytes = 0;
      std::string Text = safetensorsHeader(Layouts, L->Offsets, DataBytes);
      for (auto &[N, Lay] : Layouts)
        L->Layouts[N] = *Lay;
      L->Path = Dir + "/" + File;
      L->Tmp = L->Path + ".tmp";
      L->DataStart = 8 + Text.size();
      L->Fd = ::open(L->Tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
      if (L->Fd < 0)
        throw Error("error: cannot write " + L->Tmp + ": " + std::strerror(errno));
      Laid &Layout = *L;
      LaidOut[File] = std::move(L); // from here on closed on every path
      std::string Head(8, '\0');
      for (int I = 0; I < 8; ++I)
        Head[I] = static_cast<char>(static_cast<uint64_t>(Text.size()) >> (8 * I));
      Head += Text;
      if (::pwrite(Layout.Fd, Head.data(), Head.size(), 0) != static_cast<ssize_t>(Head.size()) ||
          ::ftruncate(Layout.Fd, static_cast<off_t>(Layout.DataStart + DataBytes)) != 0)
        throw Error("error: writing " + Layout.Tmp + " failed: " + std::strerror(errno));
    }
  } catch (...) {
    for (auto &[File, L] : LaidOut)
      if (L->Fd >= 0)
        ::close(L->Fd);
    throw;
  }
  try {
    if (!LaidOut.empty())
      for (unsigned I = 0; I < std::max(1u, NumThreads); ++I)
        Threads.emplace_back([this] { run(); });
  } catch (...) { // no thread left running on a half-built writer
    stopThreads();
    for (auto &[File, L] : LaidOut)
      ::close(L->Fd);
    throw;
  }
}

SafetensorsWriter::~SafetensorsWriter() {
  {
    std::lock_guard<std::mutex> G(Lock);
    Queue.clear();
  }
  stopThreads();
  for (auto &[File, L] : LaidOut)
    if (L->Fd >= 0) {
      ::close(L->Fd);
      std::remove(L->Tmp.c_str());
    }
}

void SafetensorsWriter::stopThreads() {
  {
    std::lock_guard<std::mutex> G(Lock);
    Stop = true;
    Ready.notify_all();
  }
  for (std::thread &T : Threads)
    if (T.joinable())
      T.join();
}

void SafetensorsWriter::run() {
  for (;;) {
    Job J;
    {
      std::unique_lock<std::mutex> G(Lock);
      Ready.wait(G, [&] { return Stop || !Queue.empty(); });
      if (Queue.empty())
        return;
      J = std::move(Queue.front());
      Queue.pop_front();
    }
    size_t Size = J.T.size();
    try {
      const uint8_t *P = J.T.data();
      files::injectedDiskFull(J.Offset + Size, J.Path);
      uint32_t Crc = files::writeWithCrc(J.Fd, static_cast<int64_t>(J.Offset), P, Size, J.Path);
      std::lock_guard<std::mutex> G(Lock);
      Crcs[J.T.Name] = Crc;
    } catch (...) {
      std::lock_guard<std::mutex> G(Lock);
      if (!Failure)
        Failure = std::current_exception();
      Queue.clear();
    }
    J.T = TensorToWrite(); // frees the bytes before the producer is told
    std::lock_guard<std::mutex> G(Lock);
    QueuedBytes -= Size;
    Drained.notify_all();
  }
}

void SafetensorsWriter::add(TensorToWrite T) {
  auto It = FileOf.find(T.Name);
  if (It == FileOf.end())
    throw Error("error: export produced '" + T.Name + "', which the source checkpoint does not have");
  const std::string File = It->second;
  if (Remaining[File] == 0)
    throw Error("error: export produced '" + T.Name + "' twice");
  if (auto L = LaidOut.find(File); L != LaidOut.end()) {
    const TensorLayout &Want = L->second->Layouts.at(T.Name);
    if (T.Type != Want.Type || T.Shape != Want.Shape)
      throw Error("error: export of '" + T.Name + "' gives a " + std::string(safetensorsName(T.Type)) +
                  " tensor of another shape or dtype than the source's");
    if (!L->second->Offsets.count(T.Name))
      throw Error("error: export produced '" + T.Name + "' twice");
    uint64_t Offset = L->second->DataStart + L->second->Offsets.at(T.Name);
    L->second->Offsets.erase(T.Name); // written once
    size_t Size = T.size();
    TotalTensorBytes += Size;
    Written += Size;
    --Remaining[File];
    std::unique_lock<std::mutex> G(Lock);
    Drained.wait(G, [&] { return Failure || QueuedBytes == 0 || QueuedBytes + Size <= MaxPending; });
    if (Failure)
      std::rethrow_exception(Failure);
    QueuedBytes += Size;
    Queue.push_back({L->second->Fd, Offset, std::move(T), L->second->Tmp});
    Ready.notify_one();
    return;
  }
  auto &P = Pending[File];
  for (auto &Existing : P)
    if (Existing.Name == T.Name)
      throw Error("error: export produced '" + T.Name + "' twice");
  TotalTensorBytes += T.size();
  P.push_back(std::move(T));
  if (--Remaining[File] == 0)
    flush(File);
}

void SafetensorsWriter::flush(const std::string &File) {
  std::vector<const TensorToWrite *> Ptrs;
  for (auto &T : Pending[File])
    Ptrs.push_back(&T);
  std::map<std::string, std::string> Meta{{"format", "pt"}};
  writeSafetensors(Dir + "/" + File, Ptrs, Meta);
  for (auto &T : Pending[File])
    Crcs[T.Name] = crc32(T.data(), T.size());
  for (auto &T : Pending[File])
    Written += T.size();
  Pending.erase(File);
}

void SafetensorsWriter::finish() {
  stopThreads(); // every queued tensor written
  if (Failure)
    std::rethrow_exception(Failure);
  std::vector<std::string> Missing;
  for (auto &[Name, File] : FileOf)
    if (Remaining[File] != 0) {
      bool Have = false;
      if (auto L = LaidOut.find(File); L != LaidOut.end())
        Have = !L->second->Offsets.count(Name);
      for (auto &T : Pending[File])
        Have |= T.Name == Name;
      if (!Have)
        Missing.push_back(Name);
    }
  if (!Missing.empty()) {
    std::string List;
    for (size_t I = 0; I < Missing.size() && I < 20; ++I)
      List += "\n  " + Missing[I];
    throw Error("error: export did not produce " + std::to_string(Missing.size()) +
                " tensor(s) of the source checkpoint:" + List);
  }
  for (auto &[File, L] : LaidOut) {
    int Fd = L->Fd;
    L->Fd = -1;
    if (::close(Fd) != 0)
      throw Error("error: writing " + L->Tmp + " failed: " + std::strerror(errno));
    if (std::rename(L->Tmp.c_str(), L->Path.c_str()) != 0)
      throw Error("error: cannot rename " + L->Tmp + " to " + L->Path + ": " + std::strerror(errno));
  }
  if (WriteIndex) {
    nlohmann::ordered_json Index;
    Index["metadata"] = {{"total_size", TotalTensorBytes}};
    nlohmann::ordered_json Map = nlohmann::ordered_json::object();
    for (auto &[Name, File] : FileOf)
      Map[Name] = File;
    Index["weight_map"] = Map;
    std::string Path = Dir + "/model.safetensors.index.json";
    FILE *F = std::fopen(Path.c_str(), "wb");
    if (!F)
      throw Error("error: cannot write " + Path + ": " + std::strerror(errno));
    std::string Text = Index.dump(2) + "\n";
    bool OK = std::fwrite(Text.data(), 1, Text.size(), F) == Text.size();
    if ((std::fclose(F) != 0) || !OK)
      throw Error("error: writing " + Path + " failed");
  }
}

} // namespace bridge
