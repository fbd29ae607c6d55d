//===- TorchDistWriter.cpp - torch_dist iteration directories --------------===//
#include "bridge/TorchDistWriter.h"

#include "bridge/Config.h" // bridge::Error
#include "bridge/Pickle.h"

#include <algorithm>
#include <cerrno>
#include <cstring>

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

TorchDistWriter::TorchDistWriter(std::string IterDir, std::string FileName)
    : Dir(std::move(IterDir)), File(std::move(FileName)) {
  std::string Path = Dir + "/" + File;
  Out = std::fopen(Path.c_str(), "wb");
  if (!Out)
    throw Error("error: cannot write " + Path + ": " + std::strerror(errno));
}

TorchDistWriter::~TorchDistWriter() {
  if (Out)
    std::fclose(Out);
}

void TorchDistWriter::append(const std::string &B, uint64_t &At) {
  At = Offset;
  if (std::fwrite(B.data(), 1, B.size(), Out) != B.size())
    throw Error("error: writing " + Dir + "/" + File + " failed: " + std::strerror(errno));
  Offset += B.size();
}

void TorchDistWriter::declareTensor(const std::string &Key, DType Type, std::vector<int64_t> Shape) {
  if (Tensors.count(Key) || Bytes.count(Key))
    throw Error("error: internal: checkpoint key '" + Key + "' declared twice");
  Tensors[Key] = {Type, std::move(Shape), {}};
  Order.push_back(Key);
}

void TorchDistWriter::addChunk(const std::string &Key, std::vector<int64_t> Offsets, std::vector<int64_t> Sizes,
                               const uint8_t *Data, size_t NumBytes) {
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
  PickleWriter P;
  P.tensor(T.Type, "0", Numel, Sizes);
  // Streamed to the file: the chunk's bytes are written from where they lie.
  Chunk C{std::move(Offsets), std::move(Sizes), Offset, 0};
  C.Length = writeTorchSaveArchive(P.finish(), {{"0", Data, NumBytes}}, [&](const void *D, size_t N) {
    if (std::fwrite(D, 1, N, Out) != N)
      throw Error("error: writing " + Dir + "/" + File + " failed: " + std::strerror(errno));
  });
  Offset += C.Length;
  T.Chunks.push_back(std::move(C));
}

void TorchDistWriter::addBytes(const std::string &Key, const std::string &Record) {
  if (Tensors.count(Key) || Bytes.count(Key))
    throw Error("error: internal: checkpoint key '" + Key + "' written twice");
  uint64_t At;
  append(Record, At);
  Bytes[Key] = {At, Record.size()};
}

void TorchDistWriter::finish() {
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
  if (std::fclose(Out) != 0) {
    Out = nullptr;
    throw Error("error: writing " + Dir + "/" + File + " failed: " + std::strerror(errno));
  }
  Out = nullptr;

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
  auto StorageInfo = [&](uint64_t At, uint64_t Length) {
    P.global("torch.distributed.checkpoint.filesystem", "_StorageInfo");
    P.emptyTuple();
    P.newObj();
    P.emptyDict();
    P.mark();
    P.str("relative_path");
    P.str(File);
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
      StorageInfo(C.Offset, C.Length);
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
    StorageInfo(Where.first, Where.second);
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
