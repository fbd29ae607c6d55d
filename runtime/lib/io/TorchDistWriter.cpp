//===- TorchDistWriter.cpp - torch_dist iteration directories --------------===//
#include "bridge/TorchDistWriter.h"

#include "bridge/Error.h"
#include "bridge/Files.h"
#include "bridge/Pickle.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <optional>
#include <unistd.h>

namespace bridge {
namespace {

void writeWhole(const std::string &Path, const std::string &Bytes) {
  FILE *F = std::fopen(Path.c_str(), "wb");
  if (!F)
    throw Error("error: cannot write " + Path + ": " + std::strerror(errno));
  bool OK = std::fwrite(Bytes.data(), 1, Bytes.size(), F) == Bytes.size();
  OK = (std::fclose(F) == 0) && OK;
  if (!OK)
    throw Error("error: writing " + Path + " failed: " + std::strerror(errno));
}

const char *MetaModule = "torch.distributed.checkpoint.metadata";

void tensorProperties(PickleWriter &P, DType T) {
  P.global(MetaModule, "TensorProperties");
  P.emptyTuple();
  P.newObj();
  // __setstate__ takes (dtype, layout, requires_grad, memory format, pin_memory).
  P.mark();
  P.global("torch", torchName(T));
  P.global("torch", "strided");
  P.boolean(false);
  P.global(MetaModule, "_MEM_FORMAT_ENCODING");
  P.mark();
  P.integer(0);
  P.tuple();
  P.reduce();
  P.boolean(false);
  P.tuple();
  P.build();
}

} // namespace

struct TorchDistWriter::OutFile {
  std::string Name;
  int Fd = -1;
  int JournalFd = -1; ///< `<Name>.journal`, or -1
  uint64_t Size = 0; ///< bytes reserved so far
  std::deque<Job> Queue;
  std::condition_variable Ready;
  bool Stop = false;
  std::thread Thread;
};

TorchDistWriter::TorchDistWriter(std::string IterDir, unsigned NumFiles, uint64_t MaxPendingBytes, unsigned Rank,
                                 unsigned FirstFile, bool Journal)
    : Dir(std::move(IterDir)), MaxPending(MaxPendingBytes) {
  for (unsigned I = 0; I < std::max(1u, NumFiles); ++I) {
    auto F = std::make_unique<OutFile>();
    F->Name = "__" + std::to_string(Rank) + "_" + std::to_string(FirstFile + I) + ".distcp";
    FileNames.push_back(F->Name);
    std::string Path = Dir + "/" + F->Name;
    F->Fd = ::open(Path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int E = errno;
    OutFile &Made = *F;
    Files.push_back(std::move(F));
    if (Made.Fd >= 0 && Journal) {
      Path += ".journal";
      Made.JournalFd = ::open(Path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644);
      E = errno;
    }
    if (Made.Fd < 0 || (Journal && Made.JournalFd < 0)) {
      stop();
      throw Error("error: cannot write " + Path + ": " + std::strerror(E));
    }
  }
  try {
    for (auto &F : Files)
      F->Thread = std::thread([this, P = F.get()] { run(*P); });
  } catch (...) { // no thread left running on a half-built writer
    stop();
    throw;
  }
}

TorchDistWriter::~TorchDistWriter() { stop(); }

void TorchDistWriter::stop() {
  {
    std::lock_guard<std::mutex> G(Lock);
    for (auto &F : Files) {
      if (!Finished)
        F->Queue.clear(); // abandoned: the caller removes the directory
      F->Stop = true;
      F->Ready.notify_all();
    }
  }
  for (auto &F : Files) {
    if (F->Thread.joinable())
      F->Thread.join();
    if (F->Fd >= 0)
      ::close(F->Fd);
    F->Fd = -1;
    if (F->JournalFd >= 0)
      ::close(F->JournalFd);
    F->JournalFd = -1;
  }
}

void TorchDistWriter::run(OutFile &F) {
  std::string Path = Dir + "/" + F.Name;
  auto Write = [&](const void *D, size_t N) {
    files::injectedDiskFullAppend(F.Fd, N, Path);
    files::writeAll(F.Fd, -1, D, N, Path);
  };
  for (;;) {
    Job J;
    {
      std::unique_lock<std::mutex> G(Lock);
      F.Ready.wait(G, [&] { return F.Stop || !F.Queue.empty(); });
      if (F.Queue.empty())
        return;
      J = std::move(F.Queue.front());
      F.Queue.pop_front();
    }
    try {
      if (J.Pickle.empty()) {
        files::injectedDiskFullAppend(F.Fd, J.Size, Path);
        *J.Crc = files::writeWithCrc(F.Fd, -1, J.Data, J.Size, Path);
      } else { // the checksums are taken here, on this file's thread
        TorchSaveWriter Z(Write);
        Z.addTorchRecords(J.Pickle);
        Z.add("data/0", J.Data, J.Size);
        *J.Crc = Z.lastCrc();
        Z.finish();
      }
      if (F.JournalFd >= 0 && !J.JournalHead.empty()) {
        // After the bytes: a line names only a record handed to the kernel
        // whole (one write, so a killed process leaves whole lines).
        std::string Line = J.JournalHead + ",\"file\":\"" + F.Name + "\",\"offset\":" + std::to_string(J.At) +
                           ",\"length\":" + std::to_string(J.Length) + ",\"crc32\":" + std::to_string(*J.Crc) + "}\n";
        files::writeAll(F.JournalFd, -1, Line.data(), Line.size(), Path + ".journal");
      }
    } catch (...) {
      std::lock_guard<std::mutex> G(Lock);
      if (!Failure)
        Failure = std::current_exception();
      for (auto &O : Files)
        O->Queue.clear();
    }
    J.Owner.reset(); // frees the chunk before the producer is told
    std::lock_guard<std::mutex> G(Lock);
    Pending -= J.Size;
    Drained.notify_all();
  }
}

void TorchDistWriter::rethrow() {
  if (Failure)
    std::rethrow_exception(Failure);
}

std::pair<unsigned, uint64_t> TorchDistWriter::enqueue(Job J, uint64_t Length) {
  std::unique_lock<std::mutex> G(Lock);
  // One record may exceed the bound alone; otherwise wait for room.
  Drained.wait(G, [&] { return Failure || Pending == 0 || Pending + J.Size <= MaxPending; });
  rethrow();
  unsigned Best = 0;
  for (unsigned I = 1; I < Files.size(); ++I)
    if (Files[I]->Size < Files[Best]->Size)
      Best = I;
  OutFile &F = *Files[Best];
  uint64_t At = F.Size;
  F.Size += Length;
  J.At = At;
  J.Length = Length;
  Pending += J.Size;
  F.Queue.push_back(std::move(J));
  F.Ready.notify_one();
  return {Best, At};
}

uint64_t TorchDistWriter::bytesWritten() const {
  uint64_t N = 0;
  for (auto &F : Files)
    N += F->Size;
  return N;
}

void TorchDistWriter::declareTensor(const std::string &Key, DType Type, std::vector<int64_t> Shape) {
  if (Tensors.count(Key) || Bytes.count(Key))
    throw Error("error: internal: checkpoint key '" + Key + "' declared twice");
  Tensors[Key] = {Type, std::move(Shape), {}};
  Order.push_back(Key);
}

void TorchDistWriter::addChunk(const std::string &Key, std::vector<int64_t> Offsets, std::vector<int64_t> Sizes,
                               const uint8_t *Data, size_t NumBytes, std::shared_ptr<const void> Owner) {
  auto It = Tensors.find(Key);
  if (It == Tensors.end())
    throw Error("error: internal: chunk of undeclared key '" + Key + "'");
  Tensor &T = It->second;
  int64_t Numel = 1;
  for (int64_t S : Sizes)
    Numel *= S;
  if (Offsets.size() != T.Shape.size() || Sizes.size() != T.Shape.size() ||
      static_cast<uint64_t>(Numel) * dtypeSize(T.Type) != NumBytes)
    throw Error("error: internal: malformed chunk of '" + Key + "'");
  if (!Owner) {
    auto Copy = std::make_shared<std::vector<uint8_t>>(Data, Data + NumBytes);
    Data = Copy->data();
    Owner = std::move(Copy);
  }
  PickleWriter P;
  P.tensor(T.Type, "0", Numel, Sizes);
  std::string Pickle = P.finish();
  // The record's length does not depend on its bytes: place it now, write
  // it (and take its checksum) on the file's thread.
  uint64_t Length =
      writeTorchSaveArchive(Pickle, {{"0", Data, NumBytes}}, [](const void *, size_t) {}, /*Checksums=*/false);
  Crcs.push_back(0);
  uint32_t *Crc = &Crcs.back();
  std::string Head = nlohmann::json{{"key", Key}, {"dtype", std::string(torchName(T.Type))}, {"shape", T.Shape},
                                    {"offsets", Offsets}, {"sizes", Sizes}}
                         .dump();
  Head.pop_back(); // the file's thread adds the place and the CRC
  auto [File, At] = enqueue({std::move(Pickle), Data, NumBytes, std::move(Owner), Crc, std::move(Head)}, Length);
  T.Chunks.push_back({std::move(Offsets), std::move(Sizes), File, At, Length, Crc});
}

void TorchDistWriter::addBytes(const std::string &Key, const std::string &Record) {
  if (Tensors.count(Key) || Bytes.count(Key))
    throw Error("error: internal: checkpoint key '" + Key + "' written twice");
  auto Copy = std::make_shared<std::string>(Record);
  const uint8_t *Data = reinterpret_cast<const uint8_t *>(Copy->data());
  Crcs.push_back(0);
  uint32_t *Crc = &Crcs.back();
  std::string Head = nlohmann::json{{"key", Key}, {"object", true}}.dump();
  Head.pop_back();
  auto [File, At] = enqueue({std::string(), Data, Copy->size(), Copy, Crc, std::move(Head)}, Copy->size());
  Bytes[Key] = {File, At, Record.size(), Crc};
}

void TorchDistWriter::finish() {
  finishData();
  finishMetadata();
}

void TorchDistWriter::finishData() {
  // Every record on disk, then the files closed (a close error is a write error).
  {
    std::lock_guard<std::mutex> G(Lock);
    Finished = true;
  }
  for (auto &F : Files) {
    {
      std::lock_guard<std::mutex> G(Lock);
      F->Stop = true;
      F->Ready.notify_all();
    }
    if (F->Thread.joinable())
      F->Thread.join();
  }
  rethrow();
  for (auto &F : Files) {
    int Fd = F->Fd;
    F->Fd = -1;
    if (Fd >= 0 && ::close(Fd) != 0)
      throw Error("error: writing " + Dir + "/" + F->Name + " failed: " + std::strerror(errno));
    if (F->JournalFd >= 0)
      ::close(F->JournalFd);
    F->JournalFd = -1;
    if (F->Size == 0) // a file no record went to
      std::remove((Dir + "/" + F->Name).c_str());
  }
}

std::string TorchDistWriter::records() const {
  nlohmann::json R;
  R["files"] = FileNames;
  nlohmann::json Ts = nlohmann::json::array();
  for (const std::string &Key : Order) {
    const Tensor &T = Tensors.at(Key);
    nlohmann::json Cs = nlohmann::json::array();
    for (const Chunk &C : T.Chunks)
      Cs.push_back({C.Offsets, C.Sizes, C.File, C.Offset, C.Length, *C.Crc});
    Ts.push_back({{"key", Key}, {"dtype", std::string(torchName(T.Type))}, {"shape", T.Shape}, {"chunks", Cs}});
  }
  R["tensors"] = Ts;
  nlohmann::json Bs = nlohmann::json::array();
  for (auto &[Key, B] : Bytes)
    Bs.push_back({{"key", Key}, {"file", B.File}, {"offset", B.Offset}, {"length", B.Length}, {"crc32", *B.Crc}});
  R["bytes"] = Bs;
  return R.dump();
}

void TorchDistWriter::addRecords(const std::string &Text) {
  nlohmann::json R = nlohmann::json::parse(Text);
  const unsigned Base = static_cast<unsigned>(FileNames.size());
  for (const auto &N : R.at("files"))
    FileNames.push_back(N.get<std::string>());
  for (const auto &J : R.at("tensors")) {
    std::string Key = J.at("key").get<std::string>();
    std::string TypeName = J.at("dtype").get<std::string>();
    std::optional<DType> Known = dtypeFromTorch(TypeName);
    if (!Known)
      throw Error("error: internal: another process recorded '" + Key + "' with dtype '" + TypeName + "'");
    DType Type = *Known;
    std::vector<int64_t> Shape = J.at("shape").get<std::vector<int64_t>>();
    auto It = Tensors.find(Key);
    if (It == Tensors.end()) {
      if (Bytes.count(Key))
        throw Error("error: internal: checkpoint key '" + Key + "' written twice");
      It = Tensors.emplace(Key, Tensor{Type, Shape, {}}).first;
      Order.push_back(Key);
    } else if (It->second.Type != Type || It->second.Shape != Shape) {
      throw Error("error: '" + Key + "' comes out as " + std::string(torchName(Type)) + " in one process and " +
                  std::string(torchName(It->second.Type)) + " (or another shape) in another");
    }
    for (const auto &C : J.at("chunks")) {
      MergedCrcs.push_back(C.at(5).get<uint32_t>());
      It->second.Chunks.push_back({C.at(0).get<std::vector<int64_t>>(), C.at(1).get<std::vector<int64_t>>(),
                                   Base + C.at(2).get<unsigned>(), C.at(3).get<uint64_t>(), C.at(4).get<uint64_t>(),
                                   &MergedCrcs.back()});
    }
  }
  for (const auto &J : R.at("bytes")) {
    std::string Key = J.at("key").get<std::string>();
    if (Tensors.count(Key))
      throw Error("error: internal: checkpoint key '" + Key + "' written twice");
    // Extra-state objects are the same bytes whoever writes them: the first wins.
    MergedCrcs.push_back(J.at("crc32").get<uint32_t>());
    Bytes.emplace(Key, ByteRecord{Base + J.at("file").get<unsigned>(), J.at("offset").get<uint64_t>(),
                                  J.at("length").get<uint64_t>(), &MergedCrcs.back()});
  }
}

void TorchDistWriter::finishMetadata() {
  // Chunks tile each tensor: inside the shape, no overlaps, volumes add up.
  for (auto &[Key, T] : Tensors) {
    __int128 Volume = 0, Global = 1;
    for (int64_t D : T.Shape)
      Global *= D;
    for (size_t I = 0; I < T.Chunks.size(); ++I) {
      const Chunk &A = T.Chunks[I];
      __int128 V = 1;
      for (size_t D = 0; D < T.Shape.size(); ++D) {
        if (A.Offsets[D] < 0 || A.Offsets[D] + A.Sizes[D] > T.Shape[D])
          throw Error("error: internal: a chunk of '" + Key + "' lies outside its global shape");
        V *= A.Sizes[D];
      }
      Volume += V;
      for (size_t J = 0; J < I; ++J) {
        const Chunk &B = T.Chunks[J];
        bool Overlap = true;
        for (size_t D = 0; D < T.Shape.size(); ++D)
          Overlap &= A.Offsets[D] < B.Offsets[D] + B.Sizes[D] && B.Offsets[D] < A.Offsets[D] + A.Sizes[D];
        if (Overlap && V > 0)
          throw Error("error: internal: two chunks of '" + Key + "' overlap");
      }
    }
    if (Volume != Global)
      throw Error("error: internal: the chunks of '" + Key + "' do not cover its global shape");
  }

  PickleWriter P;
  P.global(MetaModule, "Metadata");
  P.emptyTuple();
  P.newObj();
  P.emptyDict();
  P.mark();
  P.str("state_dict_metadata");
  P.emptyDict();
  P.mark();
  for (const std::string &Key : Order) {
    const Tensor &T = Tensors[Key];
    P.str(Key);
    P.global(MetaModule, "TensorStorageMetadata");
    P.emptyTuple();
    P.newObj();
    P.emptyDict();
    P.mark();
    P.str("properties");
    tensorProperties(P, T.Type);
    P.str("size");
    P.torchSize(T.Shape);
    P.str("chunks");
    P.emptyList();
    P.mark();
    for (const Chunk &C : T.Chunks) {
      P.global(MetaModule, "ChunkStorageMetadata");
      P.emptyTuple();
      P.newObj();
      P.emptyDict();
      P.mark();
      P.str("offsets");
      P.torchSize(C.Offsets);
      P.str("sizes");
      P.torchSize(C.Sizes);
      P.setItems();
      P.build();
    }
    P.appends();
    P.setItems();
    P.build();
  }
  for (auto &[Key, _] : Bytes) {
    P.str(Key);
    P.global(MetaModule, "BytesStorageMetadata");
    P.emptyTuple();
    P.newObj();
  }
  P.setItems();
  P.str("planner_data");
  P.none();
  P.str("storage_data");
  P.emptyDict();
  P.mark();
  auto StorageInfo = [&](unsigned File, uint64_t At, uint64_t Length) {
    P.global("torch.distributed.checkpoint.filesystem", "_StorageInfo");
    P.emptyTuple();
    P.newObj();
    P.emptyDict();
    P.mark();
    P.str("relative_path");
    P.str(FileNames[File]);
    P.str("offset");
    P.integer(static_cast<int64_t>(At));
    P.str("length");
    P.integer(static_cast<int64_t>(Length));
    P.setItems();
    P.build();
  };
  for (const std::string &Key : Order)
    for (const Chunk &C : Tensors[Key].Chunks) {
      P.global(MetaModule, "MetadataIndex");
      P.emptyTuple();
      P.newObj();
      P.emptyDict();
      P.mark();
      P.str("fqn");
      P.str(Key);
      P.str("offset");
      P.torchSize(C.Offsets);
      P.str("index");
      P.none();
      P.setItems();
      P.build();
      StorageInfo(C.File, C.Offset, C.Length);
    }
  for (auto &[Key, Where] : Bytes) {
    P.global(MetaModule, "MetadataIndex");
    P.emptyTuple();
    P.newObj();
    P.emptyDict();
    P.mark();
    P.str("fqn");
    P.str(Key);
    P.str("index");
    P.none();
    P.setItems();
    P.build();
    StorageInfo(Where.File, Where.Offset, Where.Length);
  }
  P.setItems();
  P.setItems();
  P.build();
  writeWhole(Dir + "/.metadata", P.finish());

  // The 4-key form every Megatron-Core version accepts.
  writeWhole(Dir + "/metadata.json", "{\"sharded_backend\": \"torch_dist\", \"sharded_backend_version\": 1, "
                                     "\"common_backend\": \"torch\", \"common_backend_version\": 1}");
  PickleWriter C;
  C.emptyDict();
  C.mark();
  C.str("checkpoint_version");
  C.float64(3.0);
  C.str("iteration");
  C.integer(0);
  C.str("content_metadata");
  C.emptyDict();
  C.mark();
  C.str("singleton_local_shards");
  C.boolean(false);
  C.str("chained_optim_avoid_prefix");
  C.boolean(true);
  C.setItems();
  C.setItems();
  writeWhole(Dir + "/common.pt", torchSaveArchive(C.finish(), {}));

  // What verify checks: each record where it lies and its bytes' CRC-32
  // (of the tensor chunk inside a record; of the whole record for objects).
  nlohmann::ordered_json M;
  M["format"] = 1;
  M["checksum"] = "crc32";
  nlohmann::ordered_json Chunks = nlohmann::ordered_json::array();
  for (const std::string &Key : Order)
    for (const Chunk &Ch : Tensors[Key].Chunks)
      Chunks.push_back({{"key", Key}, {"offsets", Ch.Offsets}, {"file", FileNames[Ch.File]}, {"offset", Ch.Offset},
                        {"length", Ch.Length}, {"crc32", *Ch.Crc}});
  M["chunks"] = Chunks;
  nlohmann::ordered_json Objects = nlohmann::ordered_json::array();
  for (auto &[Key, B] : Bytes)
    Objects.push_back({{"key", Key}, {"file", FileNames[B.File]}, {"offset", B.Offset}, {"length", B.Length},
                       {"crc32", *B.Crc}});
  M["objects"] = Objects;
  writeWhole(Dir + "/manifest.json", M.dump(1) + "\n");
}

std::string universalExtraStateRecord() {
  static const uint8_t NonePickle[] = {0x80, 0x02, 0x4E, 0x2E};
  PickleWriter P;
  P.emptyList();
  P.mark();
  P.tensor(DType::U8, "0", 4, {4});
  P.appends();
  return torchSaveArchive(P.finish(), {{"0", NonePickle, sizeof NonePickle}});
}

std::string trainStateArchive() {
  struct Field {
    const char *Name;
    DType Type;
  };
  static const Field Fields[] = {{"step", DType::I64},
                                 {"consumed_train_samples", DType::I64},
                                 {"skipped_train_samples", DType::I64},
                                 {"consumed_valid_samples", DType::I64},
                                 {"floating_point_operations_so_far", DType::F32},
                                 {"do_train", DType::Bool},
                                 {"do_valid", DType::Bool},
                                 {"do_test", DType::Bool}};
  static const uint8_t Zeros[8] = {0};
  PickleWriter P;
  P.emptyDict();
  P.mark();
  std::vector<StorageBytes> Storages;
  int K = 0;
  for (const Field &F : Fields) {
    std::string Key = std::to_string(K++);
    P.str(F.Name);
    P.tensor(F.Type, Key, 1, {});
    Storages.push_back({Key, Zeros, dtypeSize(F.Type)});
  }
  P.setItems();
  std::string Pickle = P.finish();
  return torchSaveArchive(Pickle, Storages);
}

} // namespace bridge
