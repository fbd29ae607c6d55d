//===- TorchDistReaderTest.cpp - unpickler, torch.save and torch_dist reading -===//
//
// Three layers, bottom up: the restricted unpickler on hand-assembled
// opcodes (including hostile and broken input), torch.save archives written
// by Pickle.h read back bit for bit, and whole torch_dist checkpoints: the
// two Megatron-Core-written fixtures (checked against their README) and
// synthetic ones written here, valid and hostile.
//
//===----------------------------------------------------------------------===//
#include "bridge/TorchDistReader.h"
#include "bridge/TorchDistWriter.h"
#include "bridge/Pickle.h"
#include "bridge/Unpickle.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <sys/stat.h>

using namespace bridge;
namespace fs = std::filesystem;
using Kind = PyValue::Kind;

namespace {

// ---- helpers ------------------------------------------------------------------------

/// The bridge::Error message \p Fn throws, or a marker when it throws
/// something else or nothing.
template <class F> std::string errorOf(F &&Fn) {
  try {
    Fn();
  } catch (const Error &E) {
    return E.what();
  } catch (const std::exception &E) {
    return std::string("<not a bridge::Error: ") + E.what() + ">";
  }
  return "<no error>";
}

#define CHECK_ERROR(Expr, Substring)                                                                                   \
  do {                                                                                                                 \
    std::string Msg_ = errorOf([&] { (void)(Expr); });                                                                 \
    CHECK_MESSAGE(Msg_.find(Substring) != std::string::npos, "expected '" << (Substring) << "' in: " << Msg_);         \
    CHECK_MESSAGE(Msg_.rfind("error: ", 0) == 0, "not an 'error: ' message: " << Msg_);                                \
  } while (0)

/// Builds raw pickle bytes opcode by opcode.
struct Ops {
  std::string S;
  Ops &op(int B) {
    S += static_cast<char>(B);
    return *this;
  }
  Ops &le(uint64_t V, int N) {
    for (int I = 0; I < N; ++I)
      S += static_cast<char>((V >> (8 * I)) & 0xff);
    return *this;
  }
  Ops &raw(std::string_view R) {
    S += R;
    return *this;
  }
  Ops &shortStr(std::string_view T) { return op(0x8c).le(T.size(), 1).raw(T); }
  Ops &k(int V) { return op('K').le(V, 1); }
  Ops &memoize() { return op(0x94); }
};

/// A string literal with its embedded NULs.
template <size_t N> std::string lit(const char (&S)[N]) { return std::string(S, N - 1); }

std::string_view sv(const std::vector<uint8_t> &V) {
  return std::string_view(reinterpret_cast<const char *>(V.data()), V.size());
}

std::vector<uint8_t> readFile(const std::string &Path, uint64_t Offset = 0, uint64_t Length = UINT64_MAX) {
  std::ifstream In(Path, std::ios::binary);
  REQUIRE_MESSAGE(In.good(), "cannot open " << Path);
  std::vector<uint8_t> All((std::istreambuf_iterator<char>(In)), std::istreambuf_iterator<char>());
  if (Length == UINT64_MAX)
    Length = All.size() - Offset;
  REQUIRE(Offset + Length <= All.size());
  return std::vector<uint8_t>(All.begin() + Offset, All.begin() + Offset + Length);
}

void writeFile(const std::string &Path, std::string_view Data) {
  std::ofstream Out(Path, std::ios::binary | std::ios::trunc);
  Out.write(Data.data(), static_cast<std::streamsize>(Data.size()));
  REQUIRE(Out.good());
}

/// A fresh temporary directory, removed with everything in it at scope exit.
struct TempDir {
  std::string Path;
  TempDir() {
    char Tmpl[] = "/tmp/bridge-torchdist-XXXXXX";
    REQUIRE(::mkdtemp(Tmpl) != nullptr);
    Path = Tmpl;
  }
  ~TempDir() {
    std::error_code Ec;
    fs::remove_all(Path, Ec);
  }
};

std::vector<uint8_t> pattern(size_t N, uint32_t Seed) {
  std::vector<uint8_t> V(N);
  uint32_t X = Seed * 2654435761u + 12345;
  for (size_t I = 0; I < N; ++I) {
    X = X * 1664525u + 1013904223u;
    V[I] = static_cast<uint8_t>(X >> 24);
  }
  return V;
}

int64_t product(const std::vector<int64_t> &D) {
  int64_t N = 1;
  for (int64_t X : D)
    N *= X;
  return N;
}

/// Extracts box [Off, Off+Sizes) of a row-major tensor of shape \p Shape,
/// element by element (independent of the reader's run merging).
std::vector<uint8_t> extractBox(const std::vector<uint8_t> &Global, const std::vector<int64_t> &Shape,
                                const std::vector<int64_t> &Off, const std::vector<int64_t> &Sizes, size_t Elem) {
  int64_t N = product(Sizes);
  std::vector<uint8_t> Out(static_cast<size_t>(N) * Elem);
  std::vector<int64_t> Idx(Sizes.size(), 0);
  for (int64_t I = 0; I < N; ++I) {
    int64_t Flat = 0;
    for (size_t D = 0; D < Shape.size(); ++D)
      Flat = Flat * Shape[D] + Off[D] + Idx[D];
    std::memcpy(&Out[I * Elem], &Global[Flat * Elem], Elem);
    for (size_t D = Sizes.size(); D-- > 0;) {
      if (++Idx[D] < Sizes[D])
        break;
      Idx[D] = 0;
    }
  }
  return Out;
}

std::string tensorArchive(DType Type, const std::vector<int64_t> &Shape, const std::vector<uint8_t> &Data) {
  PickleWriter P;
  P.tensor(Type, "0", product(Shape), Shape);
  return torchSaveArchive(P.finish(), {{"0", Data.data(), Data.size()}});
}

std::string listOfNoneArchive() {
  PickleWriter P;
  P.emptyList();
  P.mark();
  P.none();
  P.appends();
  return torchSaveArchive(P.finish(), {});
}

// ---- a small DCP writer for synthetic checkpoints ---------------------------------------

struct SynthChunk {
  SynthChunk(std::vector<int64_t> Offsets, std::vector<int64_t> Sizes, std::string File = "__0_0.distcp")
      : Offsets(std::move(Offsets)), Sizes(std::move(Sizes)), File(std::move(File)) {}
  std::vector<int64_t> Offsets, Sizes;
  std::string File;
  bool OmitStorage = false;        ///< leave its storage_data entry out
  std::string RelativePath;        ///< written instead of File when set
  int64_t ExtraLength = 0;         ///< added to the recorded length
  std::optional<DType> RecordType; ///< dtype of the record, if not the tensor's
};
struct SynthTensor {
  std::string Key;
  DType Type;
  std::vector<int64_t> Shape;
  std::vector<SynthChunk> Chunks;
};
struct SynthBytes {
  std::string Key;
  std::string Payload;
  std::string File = "__0_0.distcp";
};
struct SynthCheckpoint {
  std::vector<SynthTensor> Tensors;
  std::vector<SynthBytes> ByteObjects;
  std::string MetadataJson = R"({"sharded_backend": "torch_dist", "sharded_backend_version": 1})";
  bool HostileGlobal = false; ///< put os.system into .metadata
};

/// Writes \p C into \p Dir (.metadata in the protocol-2 form of the format
/// reference section 2.3) and returns each tensor's global bytes.
std::map<std::string, std::vector<uint8_t>> writeSynth(const std::string &Dir, const SynthCheckpoint &C) {
  std::map<std::string, std::string> Files;
  struct Placed {
    std::string Key;
    std::vector<int64_t> Offsets; // empty for byte objects
    bool IsTensor;
    std::string Path;
    uint64_t Offset, Length;
  };
  std::vector<Placed> Storage;
  std::map<std::string, std::vector<uint8_t>> Globals;
  uint32_t Seed = 1;
  for (const SynthBytes &B : C.ByteObjects) {
    std::string &F = Files[B.File];
    Storage.push_back({B.Key, {}, false, B.File, F.size(), B.Payload.size()});
    F += B.Payload;
  }
  for (const SynthTensor &T : C.Tensors) {
    size_t Elem = dtypeSize(T.Type);
    std::vector<uint8_t> G = pattern(static_cast<size_t>(product(T.Shape)) * Elem, Seed++);
    for (const SynthChunk &Ch : T.Chunks) {
      bool Inside = Ch.Offsets.size() == T.Shape.size();
      for (size_t D = 0; Inside && D < T.Shape.size(); ++D)
        Inside = Ch.Offsets[D] + Ch.Sizes[D] <= T.Shape[D];
      DType RT = Ch.RecordType.value_or(T.Type);
      std::vector<uint8_t> Data = Inside && RT == T.Type
                                      ? extractBox(G, T.Shape, Ch.Offsets, Ch.Sizes, Elem)
                                      : pattern(static_cast<size_t>(product(Ch.Sizes)) * dtypeSize(RT), 99);
      std::string Rec = tensorArchive(RT, Ch.Sizes, Data);
      std::string &F = Files[Ch.File];
      if (!Ch.OmitStorage)
        Storage.push_back({T.Key, Ch.Offsets, true, Ch.RelativePath.empty() ? Ch.File : Ch.RelativePath, F.size(),
                           Rec.size() + static_cast<uint64_t>(Ch.ExtraLength)});
      F += Rec;
    }
    Globals[T.Key] = std::move(G);
  }
  for (const auto &[Name, Bytes] : Files)
    writeFile(Dir + "/" + Name, Bytes);
  writeFile(Dir + "/metadata.json", C.MetadataJson);

  const char *M = "torch.distributed.checkpoint.metadata";
  PickleWriter P;
  P.global(M, "Metadata");
  P.emptyTuple();
  P.newObj();
  P.emptyDict();
  P.mark();
  P.str("state_dict_metadata");
  P.emptyDict();
  P.mark();
  for (const SynthTensor &T : C.Tensors) {
    P.str(T.Key);
    P.global(M, "TensorStorageMetadata");
    P.emptyTuple();
    P.newObj();
    P.emptyDict();
    P.mark();
    P.str("properties");
    P.global(M, "TensorProperties");
    P.emptyTuple();
    P.newObj();
    P.mark();
    P.global("torch", std::string(torchName(T.Type)));
    P.global("torch", "strided");
    P.boolean(false);
    P.global(M, "_MEM_FORMAT_ENCODING");
    P.mark();
    P.integer(0);
    P.tuple();
    P.reduce();
    P.boolean(false);
    P.tuple();
    P.build();
    P.str("size");
    P.torchSize(T.Shape);
    P.str("chunks");
    P.emptyList();
    P.mark();
    for (const SynthChunk &Ch : T.Chunks) {
      P.global(M, "ChunkStorageMetadata");
      P.emptyTuple();
      P.newObj();
      P.emptyDict();
      P.mark();
      P.str("offsets");
      P.torchSize(Ch.Offsets);
      P.str("sizes");
      P.torchSize(Ch.Sizes);
      P.setItems();
      P.build();
    }
    P.appends();
    P.setItems();
    P.build();
  }
  for (const SynthBytes &B : C.ByteObjects) {
    P.str(B.Key);
    P.global(M, "BytesStorageMetadata");
    P.emptyTuple();
    P.newObj();
  }
  P.setItems();
  P.str("planner_data");
  P.none();
  P.str("storage_data");
  P.emptyDict();
  P.mark();
  for (const Placed &S : Storage) {
    P.global(M, "MetadataIndex");
    P.emptyTuple();
    P.newObj();
    P.emptyDict();
    P.mark();
    P.str("fqn");
    P.str(S.Key);
    if (S.IsTensor) {
      P.str("offset");
      P.torchSize(S.Offsets);
    }
    P.str("index");
    P.none();
    P.setItems();
    P.build();
    P.global("torch.distributed.checkpoint.filesystem", "_StorageInfo");
    P.emptyTuple();
    P.newObj();
    P.emptyDict();
    P.mark();
    P.str("relative_path");
    P.str(S.Path);
    P.str("offset");
    P.integer(static_cast<int64_t>(S.Offset));
    P.str("length");
    P.integer(static_cast<int64_t>(S.Length));
    P.setItems();
    P.build();
  }
  P.setItems();
  if (C.HostileGlobal) {
    P.str("version");
    P.global("os", "system");
    P.mark();
    P.str("true");
    P.tuple();
    P.reduce();
  }
  P.setItems();
  P.build();
  writeFile(Dir + "/.metadata", P.finish());
  return Globals;
}

// ---- zip patching and building -------------------------------------------------------

void put32(std::string &S, size_t At, uint32_t V) {
  for (int I = 0; I < 4; ++I)
    S[At + I] = static_cast<char>((V >> (8 * I)) & 0xff);
}

/// Offset of the central directory header of entry \p Name.
size_t centralHeader(const std::string &Zip, const std::string &Name) {
  const std::string Sig("PK\x01\x02", 4);
  for (size_t At = Zip.find(Sig); At != std::string::npos; At = Zip.find(Sig, At + 1)) {
    uint32_t NameLen = static_cast<uint8_t>(Zip[At + 28]) | static_cast<uint8_t>(Zip[At + 29]) << 8;
    if (Zip.compare(At + 46, NameLen, Name) == 0 && NameLen == Name.size())
      return At;
  }
  FAIL("no central header for " << Name);
  return 0;
}

/// A STORED zip written independently of Pickle.h, optionally with every
/// size and offset moved to ZIP64 fields.
std::string makeZip(const std::vector<std::pair<std::string, std::string>> &Entries, bool Zip64) {
  auto P16 = [](std::string &S, uint32_t V) {
    S += static_cast<char>(V & 0xff);
    S += static_cast<char>((V >> 8) & 0xff);
  };
  auto P32 = [](std::string &S, uint32_t V) {
    for (int I = 0; I < 4; ++I)
      S += static_cast<char>((V >> (8 * I)) & 0xff);
  };
  auto P64 = [](std::string &S, uint64_t V) {
    for (int I = 0; I < 8; ++I)
      S += static_cast<char>((V >> (8 * I)) & 0xff);
  };
  std::string Z, Cd;
  for (const auto &[Name, Data] : Entries) {
    uint32_t Crc = bridge::crc32(reinterpret_cast<const uint8_t *>(Data.data()), Data.size());
    uint64_t Lho = Z.size();
    P32(Z, 0x04034b50);
    P16(Z, 45);
    P16(Z, 0);
    P16(Z, 0);
    P16(Z, 0);
    P16(Z, 0x21);
    P32(Z, Crc);
    P32(Z, Zip64 ? 0xFFFFFFFF : static_cast<uint32_t>(Data.size()));
    P32(Z, Zip64 ? 0xFFFFFFFF : static_cast<uint32_t>(Data.size()));
    P16(Z, static_cast<uint32_t>(Name.size()));
    P16(Z, Zip64 ? 20 : 0);
    Z += Name;
    if (Zip64) {
      P16(Z, 1);
      P16(Z, 16);
      P64(Z, Data.size());
      P64(Z, Data.size());
    }
    Z += Data;

    P32(Cd, 0x02014b50);
    P16(Cd, 45);
    P16(Cd, 45);
    P16(Cd, 0);
    P16(Cd, 0);
    P16(Cd, 0);
    P16(Cd, 0x21);
    P32(Cd, Crc);
    P32(Cd, Zip64 ? 0xFFFFFFFF : static_cast<uint32_t>(Data.size()));
    P32(Cd, Zip64 ? 0xFFFFFFFF : static_cast<uint32_t>(Data.size()));
    P16(Cd, static_cast<uint32_t>(Name.size()));
    P16(Cd, Zip64 ? 28 : 0);
    P16(Cd, 0);
    P16(Cd, 0);
    P16(Cd, 0);
    P32(Cd, 0);
    P32(Cd, Zip64 ? 0xFFFFFFFF : static_cast<uint32_t>(Lho));
    Cd += Name;
    if (Zip64) {
      P16(Cd, 1);
      P16(Cd, 24);
      P64(Cd, Data.size());
      P64(Cd, Data.size());
      P64(Cd, Lho);
    }
  }
  uint64_t CdOffset = Z.size();
  Z += Cd;
  if (Zip64) {
    uint64_t Rec = Z.size();
    P32(Z, 0x06064b50);
    P64(Z, 44);
    P16(Z, 45);
    P16(Z, 45);
    P32(Z, 0);
    P32(Z, 0);
    P64(Z, Entries.size());
    P64(Z, Entries.size());
    P64(Z, Cd.size());
    P64(Z, CdOffset);
    P32(Z, 0x07064b50);
    P32(Z, 0);
    P64(Z, Rec);
    P32(Z, 1);
  }
  P32(Z, 0x06054b50);
  P16(Z, 0);
  P16(Z, 0);
  P16(Z, Zip64 ? 0xFFFF : static_cast<uint32_t>(Entries.size()));
  P16(Z, Zip64 ? 0xFFFF : static_cast<uint32_t>(Entries.size()));
  P32(Z, Zip64 ? 0xFFFFFFFF : static_cast<uint32_t>(Cd.size()));
  P32(Z, Zip64 ? 0xFFFFFFFF : static_cast<uint32_t>(CdOffset));
  P16(Z, 0);
  return Z;
}

// ---- fixtures ----------------------------------------------------------------------

std::string fixtures() { return BRIDGE_FIXTURES_DIR; }

bool haveFixtures() {
  std::error_code Ec;
  return fs::exists(fixtures() + "/dense_tp2/iter_0000000/.metadata", Ec) &&
         fs::exists(fixtures() + "/moe_ep2/iter_0000000/.metadata", Ec);
}

struct ExpectedChunk {
  std::vector<int64_t> Offsets, Sizes;
  int File;
};
struct ExpectedTensor {
  std::string Key;
  DType Type;
  std::vector<int64_t> Shape;
  std::vector<ExpectedChunk> Chunks;
};

// Transcribed from fixtures/megatron-core-written/README.md, "tensors in .metadata".
const std::vector<ExpectedTensor> DenseTp2 = {
    {"decoder.final_layernorm.weight", DType::F32, {64}, {{{0}, {64}, 0}}},
    {"decoder.layers.mlp.linear_fc1.layer_norm_weight",
     DType::F32,
     {2, 64},
     {{{0, 0}, {1, 64}, 0}, {{1, 0}, {1, 64}, 0}}},
    {"decoder.layers.mlp.linear_fc1.weight",
     DType::BF16,
     {2, 256, 64},
     {{{0, 0, 0}, {1, 64, 64}, 0},
      {{0, 64, 0}, {1, 64, 64}, 1},
      {{0, 128, 0}, {1, 64, 64}, 0},
      {{0, 192, 0}, {1, 64, 64}, 1},
      {{1, 0, 0}, {1, 64, 64}, 0},
      {{1, 64, 0}, {1, 64, 64}, 1},
      {{1, 128, 0}, {1, 64, 64}, 0},
      {{1, 192, 0}, {1, 64, 64}, 1}}},
    {"decoder.layers.mlp.linear_fc2.weight",
     DType::BF16,
     {2, 64, 128},
     {{{0, 0, 0}, {1, 64, 64}, 0},
      {{0, 0, 64}, {1, 64, 64}, 1},
      {{1, 0, 0}, {1, 64, 64}, 0},
      {{1, 0, 64}, {1, 64, 64}, 1}}},
    {"decoder.layers.self_attention.linear_proj.weight",
     DType::BF16,
     {2, 64, 64},
     {{{0, 0, 0}, {1, 64, 32}, 0},
      {{0, 0, 32}, {1, 64, 32}, 1},
      {{1, 0, 0}, {1, 64, 32}, 0},
      {{1, 0, 32}, {1, 64, 32}, 1}}},
    {"decoder.layers.self_attention.linear_qkv.layer_norm_weight",
     DType::F32,
     {2, 64},
     {{{0, 0}, {1, 64}, 0}, {{1, 0}, {1, 64}, 0}}},
    {"decoder.layers.self_attention.linear_qkv.weight",
     DType::BF16,
     {2, 128, 64},
     {{{0, 0, 0}, {1, 64, 64}, 0},
      {{0, 64, 0}, {1, 64, 64}, 1},
      {{1, 0, 0}, {1, 64, 64}, 0},
      {{1, 64, 0}, {1, 64, 64}, 1}}},
    {"embedding.word_embeddings.weight", DType::BF16, {256, 64}, {{{0, 0}, {128, 64}, 0}, {{128, 0}, {128, 64}, 1}}},
    {"output_layer.weight", DType::BF16, {256, 64}, {{{0, 0}, {128, 64}, 0}, {{128, 0}, {128, 64}, 1}}},
};

std::vector<ExpectedChunk> expertChunks(int64_t Rows, int64_t Cols, int64_t Split) {
  std::vector<ExpectedChunk> Out;
  for (int64_t L = 0; L < 2; ++L)
    for (int64_t E = 0; E < 4; ++E)
      for (int64_t S = 0; S < Rows; S += Rows / Split)
        Out.push_back({{L, E, S, 0}, {1, 1, Rows / Split, Cols}, E >= 2 ? 1 : 0});
  return Out;
}

const std::vector<ExpectedTensor> MoeEp2 = {
    {"decoder.final_layernorm.weight", DType::F32, {64}, {{{0}, {64}, 0}}},
    {"decoder.layers.mlp.experts.experts.linear_fc1.weight", DType::BF16, {2, 4, 64, 64}, expertChunks(64, 64, 2)},
    {"decoder.layers.mlp.experts.experts.linear_fc2.weight", DType::BF16, {2, 4, 64, 32}, expertChunks(64, 32, 1)},
    {"decoder.layers.mlp.linear_fc1.layer_norm_weight",
     DType::F32,
     {2, 64},
     {{{0, 0}, {1, 64}, 0}, {{1, 0}, {1, 64}, 0}}},
    {"decoder.layers.mlp.router.weight",
     DType::BF16,
     {2, 4, 64},
     {{{0, 0, 0}, {1, 4, 64}, 0}, {{1, 0, 0}, {1, 4, 64}, 0}}},
    {"decoder.layers.mlp.shared_experts.linear_fc1.weight",
     DType::BF16,
     {2, 64, 64},
     {{{0, 0, 0}, {1, 32, 64}, 0},
      {{0, 32, 0}, {1, 32, 64}, 0},
      {{1, 0, 0}, {1, 32, 64}, 0},
      {{1, 32, 0}, {1, 32, 64}, 0}}},
    {"decoder.layers.mlp.shared_experts.linear_fc2.weight",
     DType::BF16,
     {2, 64, 32},
     {{{0, 0, 0}, {1, 64, 32}, 0}, {{1, 0, 0}, {1, 64, 32}, 0}}},
    {"decoder.layers.self_attention.linear_proj.weight",
     DType::BF16,
     {2, 64, 64},
     {{{0, 0, 0}, {1, 64, 64}, 0}, {{1, 0, 0}, {1, 64, 64}, 0}}},
    {"decoder.layers.self_attention.linear_qkv.layer_norm_weight",
     DType::F32,
     {2, 64},
     {{{0, 0}, {1, 64}, 0}, {{1, 0}, {1, 64}, 0}}},
    {"decoder.layers.self_attention.linear_qkv.weight",
     DType::BF16,
     {2, 128, 64},
     {{{0, 0, 0}, {1, 128, 64}, 0}, {{1, 0, 0}, {1, 128, 64}, 0}}},
    {"embedding.word_embeddings.weight", DType::BF16, {256, 64}, {{{0, 0}, {256, 64}, 0}}},
    {"output_layer.weight", DType::BF16, {256, 64}, {{{0, 0}, {256, 64}, 0}}},
};

void checkAgainstReadme(const TorchDistCheckpoint &Ckpt, const std::vector<ExpectedTensor> &Expected) {
  std::vector<std::string> Keys;
  for (const ExpectedTensor &E : Expected)
    Keys.push_back(E.Key);
  CHECK(Ckpt.tensorKeys() == Keys); // both sorted
  for (const ExpectedTensor &E : Expected) {
    CAPTURE(E.Key);
    REQUIRE(Ckpt.hasTensor(E.Key));
    const DistTensor &T = Ckpt.tensor(E.Key);
    CHECK(T.Type == E.Type);
    CHECK(T.Shape == E.Shape);
    using Row = std::tuple<std::vector<int64_t>, std::vector<int64_t>, std::string>;
    std::vector<Row> Got, Want;
    for (const DistChunk &C : T.Chunks)
      Got.emplace_back(C.Offsets, C.Sizes, C.Record.File);
    for (const ExpectedChunk &C : E.Chunks)
      Want.emplace_back(C.Offsets, C.Sizes, "__" + std::to_string(C.File) + "_0.distcp");
    std::sort(Got.begin(), Got.end());
    std::sort(Want.begin(), Want.end());
    CHECK(Got == Want);
    std::vector<uint8_t> Data = Ckpt.readTensor(E.Key);
    CHECK(Data.size() == static_cast<size_t>(product(E.Shape)) * dtypeSize(E.Type));
  }
}

/// A record read straight from a .distcp at the README's byte range.
TensorRecord recordAt(const std::string &Dir, int File, uint64_t Offset, uint64_t Length) {
  std::string Path = Dir + "/__" + std::to_string(File) + "_0.distcp";
  std::vector<uint8_t> Bytes = readFile(Path, Offset, Length);
  return readTorchSaveTensor(sv(Bytes), Path);
}

/// Element-wise slice [Row0, Row0+Rows) x [Col0, Col0+Cols) of matrix number
/// \p Mat of a row-major (.., R, C) tensor, as contiguous bytes.
std::vector<uint8_t> block(const std::vector<uint8_t> &G, int64_t Mat, int64_t R, int64_t C, int64_t Row0, int64_t Rows,
                           int64_t Col0, int64_t Cols, size_t Elem) {
  return extractBox(G, {Mat + 1, R, C}, {Mat, Row0, Col0}, {1, Rows, Cols}, Elem);
}

} // namespace

// ==== the unpickler ======================================================================

TEST_CASE("unpickle: protocol-4 opcodes, memo sharing and containers") {
  Ops O;
  O.op(0x80).le(4, 1);
  O.op(0x95).le(0, 8); // a frame length is only checked against the input
  O.shortStr("torch").memoize().shortStr("Size").memoize().op(0x93).memoize().op('0'); // memo 0,1,2
  O.op('}').memoize().op('(');                                                         // memo 3
  O.shortStr("small").k(7);
  O.shortStr("neg").op('J').le(static_cast<uint32_t>(-5), 4);
  O.shortStr("u16").op('M').le(60000, 2);
  O.shortStr("big").op(0x8a).le(8, 1).le((uint64_t(1) << 40) + 3, 8);
  O.shortStr("negbig").op(0x8a).le(5, 1).le(static_cast<uint64_t>(-(int64_t(1) << 35)), 5);
  O.shortStr("zero").op(0x8a).le(0, 1);
  O.shortStr("long4").op(0x8b).le(2, 4).le(0x1234, 2);
  O.shortStr("f").op('G').raw(std::string("\x3f\xf8\0\0\0\0\0\0", 8)); // 1.5
  O.shortStr("t").op('N').op(0x88).op(0x89).op(0x87);
  O.shortStr("size").op('h').le(2, 1).op('M').le(300, 2).k(4).op(0x86).op(0x85).op('R');
  O.shortStr("lst").op(']').memoize().op('(').k(1).k(2).op('e'); // memo 4
  O.shortStr("lst2").op('h').le(4, 1);
  O.shortStr("bytes").op('C').le(3, 1).raw("abc");
  O.shortStr("bytes8").op(0x8e).le(2, 8).raw("xy");
  O.shortStr("str8").op(0x8d).le(3, 8).raw("uvw");
  O.shortStr("set").op(0x8f).op('(').k(5).k(6).op(0x90);
  O.shortStr("fs").op('(').k(8).op(0x91);
  O.shortStr("empty").op(')');
  O.k(42).shortStr("int key");
  O.op('u');
  // After the dict is complete, the shared list grows through the memo:
  // both 'lst' and 'lst2' must see it, as in Python.
  O.op('h').le(4, 1).k(3).op('a').op('0');
  O.op('.');

  PyValuePtr V = unpickle(O.S, DcpMetadataGlobals, "test.pkl");
  REQUIRE(V->is(Kind::Dict));
  CHECK(V->find("small")->Int == 7);
  CHECK(V->find("neg")->Int == -5);
  CHECK(V->find("u16")->Int == 60000);
  CHECK(V->find("big")->Int == (int64_t(1) << 40) + 3);
  CHECK(V->find("negbig")->Int == -(int64_t(1) << 35));
  CHECK(V->find("zero")->Int == 0);
  CHECK(V->find("long4")->Int == 0x1234);
  CHECK(V->find("f")->Float == 1.5);
  const PyValue *T = V->find("t");
  REQUIRE(T->is(Kind::Tuple));
  REQUIRE(T->Items.size() == 3);
  CHECK(T->Items[0]->is(Kind::None));
  CHECK((T->Items[1]->is(Kind::Bool) && T->Items[1]->Bool));
  CHECK((T->Items[2]->is(Kind::Bool) && !T->Items[2]->Bool));
  const PyValue *Size = V->find("size");
  CHECK(Size->isObjectOf("torch.Size"));
  CHECK(Size->repr() == "torch.Size((300, 4),)");
  const PyValue *L1 = V->find("lst"), *L2 = V->find("lst2");
  CHECK(L1 == L2);
  REQUIRE(L1->Items.size() == 3);
  CHECK(L1->Items[2]->Int == 3);
  CHECK((V->find("bytes")->is(Kind::Bytes) && V->find("bytes")->Text == "abc"));
  CHECK(V->find("bytes8")->Text == "xy");
  CHECK((V->find("str8")->is(Kind::Str) && V->find("str8")->Text == "uvw"));
  CHECK(V->find("set")->repr() == "[5, 6]");
  CHECK(V->find("fs")->repr() == "[8]");
  CHECK(V->find("empty")->repr() == "()");
  // Non-string keys are kept as they are.
  REQUIRE(V->Entries.size() == 19);
  CHECK((V->Entries.back().first->is(Kind::Int) && V->Entries.back().first->Int == 42));
}

TEST_CASE("unpickle: protocol-2 and text opcodes, objects, persistent ids") {
  Ops O;
  O.op(0x80).le(2, 1);
  O.raw("ccollections\nOrderedDict\n").op('q').le(0, 1).op(')').op('R');  // OrderedDict() -> Dict
  O.op('X').le(1, 4).raw("a").op('r').le(70000, 4).raw("I-17\n").op('s'); // LONG_BINPUT, INT, SETITEM
  O.op('U').le(2, 1).raw("ns");
  O.raw("cargparse\nNamespace\n").op(')').op(0x81);                         // NEWOBJ
  O.op('}').op('(').op('T').le(1, 4).raw("k").raw("I01\n").op('u').op('b'); // BUILD
  O.op('s');
  O.op('X').le(3, 4).raw("pid").op('(').op('X').le(7, 4).raw("storage").op('t').raw("p5\n").op('Q').op('s');
  O.op('X').le(4, 4).raw("list").op('(').raw("g5\n").op('j').le(70000, 4).op('l').op('s');
  O.op('X').le(3, 4).raw("dup").k(9).op('2').op(0x86).op('s');
  O.op('X').le(4, 4).raw("pops").op('(').k(1).k(2).op('1').op('(').op('0').k(3).op('s'); // POP_MARK, POP of a mark
  O.op('X').le(3, 4).raw("kwo").raw("cargparse\nNamespace\n").op(')').op('}').op('(').op('X').le(1, 4).raw("z");
  O.op('N').op('u').op(0x92).op('s'); // NEWOBJ_EX
  O.op('X').le(4, 4).raw("dict").op('(').k(1).k(2).op('d').op('s');
  O.op('.');

  GlobalAllowList Allowed = {"collections.OrderedDict", "argparse.Namespace"};
  PyValuePtr V = unpickle(O.S, Allowed, "p2.pkl");
  REQUIRE(V->is(Kind::Dict));
  CHECK(V->find("a")->Int == -17);
  const PyValue *Ns = V->find("ns");
  REQUIRE(Ns->isObjectOf("argparse.Namespace"));
  CHECK(Ns->qualifiedName() == "argparse.Namespace");
  CHECK((Ns->find("k")->is(Kind::Bool) && Ns->find("k")->Bool));
  const PyValue *Pid = V->find("pid");
  REQUIRE(Pid->is(Kind::PersistentId));
  CHECK(Pid->Args->repr() == "('storage',)");
  const PyValue *L = V->find("list");
  REQUIRE(L->Items.size() == 2);
  CHECK(L->Items[0].get() == Pid->Args.get());           // PUT/GET share the tuple
  CHECK(L->Items[1].get() == V->Entries[0].first.get()); // LONG_BINPUT/LONG_BINGET share the key
  CHECK(V->find("dup")->repr() == "(9, 9)");
  CHECK(V->find("pops")->Int == 3);
  const PyValue *Kwo = V->find("kwo");
  REQUIRE(Kwo->is(Kind::Object));
  REQUIRE(Kwo->Kwargs);
  CHECK(Kwo->Kwargs->repr() == "{'z': None}");
  CHECK(V->find("dict")->repr() == "{1: 2}");
}

TEST_CASE("unpickle: forbidden globals are refused before anything is built") {
  // The classic payload: os.system('echo pwned').
  std::string Evil = lit("\x80\x02"
                         "cos\nsystem\nX\x0a\0\0\0echo pwned\x85R.");
  CHECK_ERROR(unpickle(Evil, DcpMetadataGlobals, "evil.pkl"), "forbidden global 'os.system' in evil.pkl");
  CHECK_ERROR(unpickle(Evil, TorchSaveGlobals, "evil.pkl"), "forbidden global 'os.system'");
  // The same through STACK_GLOBAL (protocol 4).
  Ops S;
  S.op(0x80).le(4, 1).shortStr("builtins").shortStr("eval").op(0x93).shortStr("1").op(0x85).op('R').op('.');
  CHECK_ERROR(unpickle(S.S, DcpMetadataGlobals, "evil4.pkl"), "forbidden global 'builtins.eval'");
  // Each list only allows its own context: tensors are not metadata.
  std::string Rebuild = std::string("\x80\x02") + "ctorch._utils\n_rebuild_tensor_v2\n.";
  CHECK_ERROR(unpickle(Rebuild, DcpMetadataGlobals, "m.pkl"), "forbidden global 'torch._utils._rebuild_tensor_v2'");
  CHECK(unpickle(Rebuild, TorchSaveGlobals, "t.pkl")->isGlobal("torch._utils._rebuild_tensor_v2"));
  // An empty allow-list still reads plain data.
  CHECK(unpickle(std::string("\x80\x02K\x05.", 5), GlobalAllowList{}, "x")->Int == 5);
}

TEST_CASE("unpickle: malformed pickles are errors") {
  GlobalAllowList None;
  auto P = [](std::string Body) { return std::string("\x80\x02", 2) + Body; };
  CHECK_ERROR(unpickle("", None, "e.pkl"), "truncated");
  CHECK_ERROR(unpickle(P("K\x01"), None, "e.pkl"), "truncated");
  CHECK_ERROR(unpickle(P("K\x01K\x02."), None, "e.pkl"), "STOP with 2 values");
  CHECK_ERROR(unpickle(P("(K\x01."), None, "e.pkl"), "open MARK");
  CHECK_ERROR(unpickle(P("K\x01.junk"), None, "e.pkl"), "bytes after STOP");
  CHECK_ERROR(unpickle(P("K\x01t."), None, "e.pkl"), "without a MARK");
  CHECK_ERROR(unpickle(P("a."), None, "e.pkl"), "empty stack");
  CHECK_ERROR(unpickle(P("}K\x01"
                         "a."),
                       None, "e.pkl"),
              "APPEND to a dict");
  CHECK_ERROR(unpickle(P("](K\x01u."), None, "e.pkl"), "SETITEMS on a list");
  CHECK_ERROR(unpickle(P("}(K\x01u."), None, "e.pkl"), "odd number");
  CHECK_ERROR(unpickle(P("h\x03."), None, "e.pkl"), "memo key 3 was never stored");
  CHECK_ERROR(unpickle(P("\xff."), None, "e.pkl"), "unsupported pickle opcode 0xff");
  CHECK_ERROR(unpickle(P(std::string("\x8a\x09", 2) + std::string(9, '\x01') + "."), None, "e.pkl"),
              "does not fit in 64 bits");
  CHECK_ERROR(unpickle(P("K\x01K\x02R."), None, "e.pkl"), "REDUCE of a int");
  CHECK_ERROR(unpickle(P("X\xff\xff\xff\x7f."), None, "e.pkl"), "truncated");
  CHECK_ERROR(unpickle(std::string("\x80\x09K\x01.", 5), None, "e.pkl"), "unsupported pickle protocol 9");
  CHECK_ERROR(unpickle(P(std::string("\x95\xff\xff\xff\xff\0\0\0\0K\x01.", 12)), None, "e.pkl"), "frame of");
  CHECK_ERROR(unpickle(P("I12x\n."), None, "e.pkl"), "bad INT");
  CHECK_ERROR(unpickle(P("K\x01"
                         "b."),
                       None, "e.pkl"),
              "empty stack");
  CHECK_ERROR(unpickle(P("]K\x01"
                         "b."),
                       None, "e.pkl"),
              "BUILD on a list");
}

TEST_CASE("unpickle: recursive and too deeply nested values are refused") {
  GlobalAllowList None;
  // l = []; l.append(l)
  Ops L;
  L.op(0x80).le(2, 1).op(']').op('q').le(0, 1).op('h').le(0, 1).op('a').op('.');
  CHECK_ERROR(unpickle(L.S, None, "cycle.pkl"), "recursive value");
  // d = {}; d['x'] = [d]
  Ops D;
  D.op(0x80).le(2, 1).op('}').op('q').le(0, 1).op('X').le(1, 4).raw("x").op('(').op('h').le(0, 1).op('l');
  D.op('s').op('.');
  CHECK_ERROR(unpickle(D.S, None, "cycle2.pkl"), "recursive value");
  // The same list twice is sharing, not recursion.
  Ops Twice;
  Twice.op(0x80).le(2, 1).op(']').op('q').le(0, 1).op('h').le(0, 1).op(0x86).op('.');
  PyValuePtr T = unpickle(Twice.S, None, "twice.pkl");
  CHECK(T->Items[0] == T->Items[1]);
  auto Nested = [](int Depth) {
    std::string S("\x80\x02", 2);
    S.append(static_cast<size_t>(Depth), ']');
    S.append(static_cast<size_t>(Depth - 1), 'a');
    return S + ".";
  };
  CHECK(unpickle(Nested(UnpickleMaxDepth), None, "deep.pkl")->is(Kind::List));
  CHECK_ERROR(unpickle(Nested(UnpickleMaxDepth + 1), None, "deeper.pkl"), "nested deeper than");
  // 60 000 levels: refused without overflowing the stack. (A million, two
  // bytes each, is refused earlier by the node budget.)
  CHECK_ERROR(unpickle(Nested(60000), None, "deepest.pkl"), "nested deeper than");
  CHECK_ERROR(unpickle(Nested(1000000), None, "deepest.pkl"), "makes more than");
}

TEST_CASE("unpickle: every truncation and random corruption fails cleanly") {
  std::vector<std::string> Inputs;
  {
    PickleWriter P;
    P.emptyDict();
    P.mark();
    P.str("t");
    P.tensor(DType::BF16, "0", 6, {2, 3});
    P.str("x");
    P.float64(2.5);
    P.str("n");
    P.integer(int64_t(1) << 40);
    P.setItems();
    Inputs.push_back(P.finish());
  }
  if (haveFixtures()) {
    std::vector<uint8_t> M = readFile(fixtures() + "/moe_ep2/iter_0000000/.metadata");
    Inputs.emplace_back(M.begin(), M.end());
  }
  for (const std::string &In : Inputs) {
    const GlobalAllowList &Allowed = In.size() > 1000 ? DcpMetadataGlobals : TorchSaveGlobals;
    REQUIRE(unpickle(In, Allowed, "whole") != nullptr);
    for (size_t N = 0; N < In.size(); ++N) {
      std::string Msg = errorOf([&] { unpickle(std::string_view(In).substr(0, N), Allowed, "cut"); });
      if (Msg.rfind("error: cut: ", 0) != 0)
        FAIL_CHECK("prefix of " << N << " bytes: " << Msg);
    }
    // Single-byte corruptions: an Error or a value, never anything else.
    uint32_t X = 7;
    for (int Round = 0; Round < 3000; ++Round) {
      X = X * 1664525u + 1013904223u;
      std::string Bad = In;
      Bad[(X >> 8) % Bad.size()] = static_cast<char>(X >> 24);
      std::string Msg = errorOf([&] { unpickle(Bad, Allowed, "bad"); });
      if (Msg != "<no error>" && Msg.rfind("error: bad: ", 0) != 0)
        FAIL_CHECK("corruption round " << Round << ": " << Msg);
    }
  }
  // Pure garbage.
  uint32_t X = 99;
  for (int Round = 0; Round < 3000; ++Round) {
    std::string G;
    X = X * 1664525u + 1013904223u;
    size_t Len = (X >> 16) % 48;
    for (size_t I = 0; I < Len; ++I) {
      X = X * 1664525u + 1013904223u;
      G += static_cast<char>(X >> 24);
    }
    std::string Msg = errorOf([&] { unpickle(G, TorchSaveGlobals, "garbage"); });
    if (Msg != "<no error>" && Msg.rfind("error: garbage: ", 0) != 0)
      FAIL_CHECK("garbage round " << Round << ": " << Msg);
  }
}

// ==== torch.save archives ================================================================

TEST_CASE("torch_dist: torch.save archives round-trip bit-identically (bf16, f32, int64, 0-d, empty)") {
  struct Case {
    std::string Name;
    DType Type;
    std::vector<int64_t> Shape;
  };
  std::vector<Case> Cases = {{"bf16", DType::BF16, {3, 5}},  {"f32", DType::F32, {4, 1, 3}},
                             {"i64", DType::I64, {7}},       {"scalar", DType::F32, {}},
                             {"empty", DType::BF16, {0, 4}}, {"scalar_i64", DType::I64, {}},
                             {"empty1d", DType::I64, {0}}};
  std::vector<std::vector<uint8_t>> Data;
  PickleWriter P;
  P.emptyDict();
  P.mark();
  for (size_t I = 0; I < Cases.size(); ++I) {
    const Case &C = Cases[I];
    Data.push_back(pattern(static_cast<size_t>(product(C.Shape)) * dtypeSize(C.Type), static_cast<uint32_t>(I)));
    P.str(C.Name);
    P.tensor(C.Type, std::to_string(I), product(C.Shape), C.Shape);
  }
  P.setItems();
  std::string Pickle = P.finish();
  std::vector<StorageBytes> Storages;
  for (size_t I = 0; I < Cases.size(); ++I)
    Storages.push_back({std::to_string(I), Data[I].data(), Data[I].size()});
  std::string Archive = torchSaveArchive(Pickle, Storages);

  PyValuePtr Root = readTorchSave(Archive, "mem.pt");
  REQUIRE(Root->is(Kind::Dict));
  for (size_t I = 0; I < Cases.size(); ++I) {
    const Case &C = Cases[I];
    CAPTURE(C.Name);
    const PyValue *V = Root->find(C.Name);
    REQUIRE(V);
    REQUIRE(V->is(Kind::Tensor));
    const TensorRecord &T = *V->Tensor;
    CHECK(T.Type == C.Type);
    CHECK(T.Shape == C.Shape);
    CHECK(T.StorageOffset == 0);
    CHECK(T.Bytes == Data[I]);
    CHECK(T.numel() == product(C.Shape));
  }

  // One tensor per archive, as DCP stores chunks.
  for (size_t I = 0; I < Cases.size(); ++I) {
    TensorRecord T = readTorchSaveTensor(tensorArchive(Cases[I].Type, Cases[I].Shape, Data[I]), "one.pt");
    CHECK(T.Bytes == Data[I]);
    CHECK(T.Shape == Cases[I].Shape);
  }
  CHECK_ERROR(readTorchSaveTensor(listOfNoneArchive(), "none.pt"), "expected one tensor");
}

TEST_CASE("torch_dist: torch.save of float8 (_rebuild_tensor_v3) and of protocol-2 sets") {
  // What torch 2.11 writes for a float8 tensor: an untyped storage sized in
  // bytes, and the dtype as the seventh argument.
  std::vector<uint8_t> Data = pattern(8, 5);
  auto Archive = [&](const char *DTypeName, int64_t StorageBytes) {
    PickleWriter P;
    P.global("torch._utils", "_rebuild_tensor_v3");
    P.mark();
    P.mark();
    P.str("storage");
    P.global("torch.storage", "UntypedStorage");
    P.str("0");
    P.str("cpu");
    P.integer(StorageBytes);
    P.tuple();
    P.persistentId();
    P.integer(2);
    P.mark();
    P.integer(2);
    P.integer(3);
    P.tuple();
    P.mark();
    P.integer(3);
    P.integer(1);
    P.tuple();
    P.boolean(false);
    P.global("collections", "OrderedDict");
    P.emptyTuple();
    P.reduce();
    P.global("torch", DTypeName);
    P.tuple();
    P.reduce();
    return torchSaveArchive(P.finish(), {{"0", Data.data(), Data.size()}});
  };
  TensorRecord T = readTorchSaveTensor(Archive("float8_e4m3fn", 8), "f8.pt");
  CHECK(T.Type == DType::F8_E4M3);
  CHECK(T.Shape == std::vector<int64_t>{2, 3});
  CHECK(T.Bytes == std::vector<uint8_t>(Data.begin() + 2, Data.end()));
  CHECK_ERROR(readTorchSaveTensor(Archive("uint16", 8), "u16.pt"), "unsupported dtype 'torch.uint16'");
  CHECK_ERROR(readTorchSaveTensor(Archive("float8_e5m2", 7), "short.pt"), "holds 8 bytes");

  // torch.save pickles with protocol 2, which names builtins '__builtin__'.
  Ops Set;
  Set.op(0x80).le(2, 1).raw("c__builtin__\nset\n").op(']').op('(').k(1).k(2).op('e').op(0x85).op('R').op('.');
  CHECK(unpickle(Set.S, TorchSaveGlobals, "set.pkl")->repr() == "[1, 2]");
}

TEST_CASE("torch_dist: strided tensors are gathered into contiguous bytes") {
  std::vector<float> Storage = {0, 1, 2, 3, 4, 5, 6, 7};
  auto Archive = [&](int64_t Offset, std::vector<int64_t> Shape, std::vector<int64_t> Strides) {
    PickleWriter P;
    P.global("torch._utils", "_rebuild_tensor_v2");
    P.mark();
    P.mark();
    P.str("storage");
    P.global("torch", "FloatStorage");
    P.str("0");
    P.str("cpu");
    P.integer(static_cast<int64_t>(Storage.size()));
    P.tuple();
    P.persistentId();
    P.integer(Offset);
    P.mark();
    for (int64_t D : Shape)
      P.integer(D);
    P.tuple();
    P.mark();
    for (int64_t S : Strides)
      P.integer(S);
    P.tuple();
    P.boolean(false);
    P.global("collections", "OrderedDict");
    P.emptyTuple();
    P.reduce();
    P.tuple();
    P.reduce();
    return torchSaveArchive(P.finish(),
                            {{"0", reinterpret_cast<const uint8_t *>(Storage.data()), Storage.size() * sizeof(float)}});
  };
  auto Floats = [](const TensorRecord &T) {
    std::vector<float> F(T.Bytes.size() / 4);
    std::memcpy(F.data(), T.Bytes.data(), T.Bytes.size());
    return F;
  };
  // A transposed 2x3 view starting at element 1: t[i][j] = s[1 + i + 2j].
  TensorRecord T = readTorchSaveTensor(Archive(1, {2, 3}, {1, 2}), "t.pt");
  CHECK(Floats(T) == std::vector<float>{1, 3, 5, 2, 4, 6});
  CHECK(T.Strides == std::vector<int64_t>{1, 2});
  CHECK(T.StorageOffset == 1);
  // An expanded (stride 0) view, and a contiguous slice at an offset.
  CHECK(Floats(readTorchSaveTensor(Archive(2, {3}, {0}), "e.pt")) == std::vector<float>{2, 2, 2});
  CHECK(Floats(readTorchSaveTensor(Archive(5, {3}, {1}), "s.pt")) == std::vector<float>{5, 6, 7});
  // Views that reach outside their storage are refused.
  CHECK_ERROR(readTorchSaveTensor(Archive(6, {3}, {1}), "oob.pt"), "reaches element 8 of a storage of 8");
  CHECK_ERROR(readTorchSaveTensor(Archive(0, {2, 3}, {4, 2}), "oob2.pt"), "reaches element");
  CHECK_ERROR(readTorchSaveTensor(Archive(0, {2}, {-1}), "neg.pt"), "negative size or stride");
}

TEST_CASE("torch_dist: torch.save zip reading checks every offset") {
  std::vector<uint8_t> Data = pattern(6 * 2, 3);
  std::string Good = tensorArchive(DType::BF16, {2, 3}, Data);
  REQUIRE(readTorchSaveTensor(Good, "good.pt").Bytes == Data);

  // Truncated anywhere: no end record, or offsets past the end.
  for (size_t Cut : {size_t(0), size_t(10), Good.size() / 2, Good.size() - 30, Good.size() - 1})
    CHECK_ERROR(readTorchSave(std::string_view(Good).substr(0, Cut), "cut.pt"), "cut.pt");
  CHECK_ERROR(readTorchSave(std::string_view(Good).substr(0, Good.size() - 1), "cut.pt"),
              "no end of central directory");
  CHECK_ERROR(readTorchSave(std::string(300, 'x'), "legacy.pt"), "not a zip archive");

  // An entry whose payload runs past the end of the archive.
  {
    std::string Bad = Good;
    size_t Cd = centralHeader(Bad, "archive/data/0");
    put32(Bad, Cd + 20, 1u << 20);
    put32(Bad, Cd + 24, 1u << 20);
    CHECK_ERROR(readTorchSave(Bad, "past.pt"), "runs past the end of the archive");
  }
  // A local header offset past the end.
  {
    std::string Bad = Good;
    put32(Bad, centralHeader(Bad, "archive/data.pkl") + 42, 0x7fffffff);
    CHECK_ERROR(readTorchSave(Bad, "lho.pt"), "past the end of the archive");
  }
  // A central directory that claims more than the archive has.
  {
    std::string Bad = Good;
    size_t Eocd = Bad.size() - 22;
    put32(Bad, Eocd + 12, 0x00ffffff);
    CHECK_ERROR(readTorchSave(Bad, "cd.pt"), "central directory");
  }
  // Compressed entries are not what torch.save writes.
  {
    std::string Bad = Good;
    Bad[centralHeader(Bad, "archive/data/0") + 10] = 8;
    CHECK_ERROR(readTorchSave(Bad, "deflate.pt"), "is compressed");
  }
  // Flipped payload bits fail the CRC.
  {
    std::string Bad = Good;
    const ZipArchive Zip(Good, "good.pt");
    Bad[Zip.find("archive/data/0")->DataOffset] ^= 1;
    CHECK_ERROR(readTorchSave(Bad, "crc.pt"), "CRC-32");
  }

  // ZIP64 records and any top-level folder name.
  PickleWriter P;
  P.tensor(DType::BF16, "7", 6, {2, 3});
  std::string Pkl = P.finish();
  std::string Payload(reinterpret_cast<const char *>(Data.data()), Data.size());
  for (bool Zip64 : {false, true}) {
    CAPTURE(Zip64);
    std::string Z = makeZip({{"my_model.v2/data.pkl", Pkl},
                             {"my_model.v2/byteorder", "little"},
                             {"my_model.v2/data/7", Payload},
                             {"my_model.v2/version", "3\n"}},
                            Zip64);
    ZipArchive Zip(Z, "z.pt");
    CHECK(Zip.entries().size() == 4);
    TensorRecord T = readTorchSaveTensor(Z, "z.pt");
    CHECK(T.Bytes == Data);
  }
  // A storage key without its data entry, and a big-endian archive.
  CHECK_ERROR(readTorchSave(makeZip({{"a/data.pkl", Pkl}}, false), "nodata.pt"), "has no archive entry 'a/data/7'");
  CHECK_ERROR(
      readTorchSave(makeZip({{"a/data.pkl", Pkl}, {"a/byteorder", "big"}, {"a/data/7", Payload}}, false), "be.pt"),
      "byte order 'big'");
  CHECK_ERROR(readTorchSave(makeZip({{"a/data.pkl", Pkl}, {"a/data/7", Payload.substr(2)}}, false), "short.pt"),
              "holds 10 bytes, but its storage has 6 bfloat16 elements");
  CHECK_ERROR(readTorchSave(makeZip({{"a/version", "3"}}, false), "nopkl.pt"), "no '<folder>/data.pkl'");
  // Forbidden globals inside data.pkl are reported with the archive entry.
  std::string Evil = lit("\x80\x02"
                         "cos\nsystem\nX\x02\0\0\0ls\x85R.");
  CHECK_ERROR(readTorchSave(makeZip({{"a/data.pkl", Evil}}, false), "evil.pt"),
              "forbidden global 'os.system' in evil.pt: a/data.pkl");
}

// ==== torch_dist checkpoints ============================================================

TEST_CASE("torch_dist: the Megatron-Core fixtures read as their README describes") {
  if (!haveFixtures()) {
    MESSAGE("fixtures not found at " << fixtures() << "; skipping the Megatron-Core fixture checks");
    return;
  }
  SUBCASE("dense_tp2") {
    std::string Dir = fixtures() + "/dense_tp2/iter_0000000";
    TorchDistCheckpoint Ckpt(Dir);
    CHECK(Ckpt.metadataJson()["sharded_backend"] == "torch_dist");
    CHECK(Ckpt.metadata().find("version")->Text == "1.0.0");
    checkAgainstReadme(Ckpt, DenseTp2);
    CHECK(Ckpt.skippedKeys().empty());

    std::vector<std::string> Bytes = Ckpt.byteObjectKeys();
    CHECK(Bytes.size() == 9);
    CHECK(std::count(Bytes.begin(), Bytes.end(), "common_state/shard_0_1") == 1);
    PyValuePtr Extra = Ckpt.readBytesObject("decoder.layers.mlp.linear_fc1._extra_state/shard_1_2");
    CHECK(Extra->repr() == "[None]");

    // Record positions from the README's file tables.
    const DistTensor &Emb = Ckpt.tensor("embedding.word_embeddings.weight");
    for (const DistChunk &C : Emb.Chunks) {
      bool First = C.Offsets[0] == 0;
      CHECK(C.Record.File == (First ? "__0_0.distcp" : "__1_0.distcp"));
      CHECK(C.Record.Offset == (First ? 11669u : 0u));
      CHECK(C.Record.Length == 17961u);
    }

    // qkv = cat over TP ranks on dim 0 (per layer), from the records read directly.
    std::vector<uint8_t> Qkv = Ckpt.readTensor("decoder.layers.self_attention.linear_qkv.weight");
    REQUIRE(Qkv.size() == 2 * 128 * 64 * 2);
    const uint64_t QkvRec[2][2] = {{44642, 29307}, {54411, 39076}}; // [layer][file]
    for (int64_t L = 0; L < 2; ++L) {
      std::vector<uint8_t> Expected;
      for (int F = 0; F < 2; ++F) {
        TensorRecord R = recordAt(Dir, F, QkvRec[L][F], 9769);
        CHECK(R.Shape == std::vector<int64_t>{1, 64, 64});
        Expected.insert(Expected.end(), R.Bytes.begin(), R.Bytes.end());
      }
      CHECK(std::equal(Expected.begin(), Expected.end(), Qkv.begin() + L * 128 * 64 * 2));
    }
    // proj = cat on the last dim: each row interleaves the two ranks.
    std::vector<uint8_t> Proj = Ckpt.readTensor("decoder.layers.self_attention.linear_proj.weight");
    const uint64_t ProjRec[2][2] = {{33296, 17961}, {38969, 23634}};
    for (int64_t L = 0; L < 2; ++L)
      for (int F = 0; F < 2; ++F) {
        TensorRecord R = recordAt(Dir, F, ProjRec[L][F], 5673);
        CHECK(block(Proj, L, 64, 64, 0, 64, 32 * F, 32, 2) == R.Bytes);
      }
    // fc1 = [gate_r0; gate_r1; up_r0; up_r1]: rank 1's up rows of layer 1.
    std::vector<uint8_t> Fc1 = Ckpt.readTensor("decoder.layers.mlp.linear_fc1.weight");
    CHECK(block(Fc1, 1, 256, 64, 192, 64, 0, 64, 2) == recordAt(Dir, 1, 78152, 9769).Bytes);
    CHECK(block(Fc1, 0, 256, 64, 128, 64, 0, 64, 2) == recordAt(Dir, 0, 77615, 9769).Bytes);
    // A float32 norm, and the readChunk path.
    std::vector<uint8_t> Norm = Ckpt.readTensor("decoder.final_layernorm.weight");
    CHECK(Norm == recordAt(Dir, 0, 126460, 1833).Bytes);
    CHECK(Ckpt.readChunk("decoder.final_layernorm.weight", 0).Bytes == Norm);

    // The common state, from common_state/shard_0_1 (no common.pt here).
    PyValuePtr Common = Ckpt.common();
    REQUIRE(Common->is(Kind::Dict));
    CHECK(Common->Entries.size() == 5);
    CHECK((Common->find("checkpoint_version")->is(Kind::Float) && Common->find("checkpoint_version")->Float == 3.0));
    CHECK(Common->find("iteration")->Int == 0);
    CHECK(Common->find("num_floating_point_operations_so_far")->Int == 0);
    const PyValue *Args = Common->find("args");
    REQUIRE(Args->isObjectOf("argparse.Namespace"));
    CHECK(Args->find("num_layers")->Int == 2);
    CHECK(Args->find("hidden_size")->Int == 64);
    CHECK(Args->find("tensor_model_parallel_size")->Int == 2);
    CHECK(Common->find("content_metadata")->repr() ==
          "{'singleton_local_shards': False, 'chained_optim_avoid_prefix': True}");

    CHECK_ERROR(Ckpt.tensor("common_state/shard_0_1"), "it is a byte object");
    CHECK_ERROR(Ckpt.readTensor("no.such.key"), "no tensor 'no.such.key'");
  }
  SUBCASE("moe_ep2") {
    std::string Dir = fixtures() + "/moe_ep2/iter_0000000";
    TorchDistCheckpoint Ckpt(Dir);
    checkAgainstReadme(Ckpt, MoeEp2);
    CHECK(Ckpt.byteObjectKeys().size() == 25);
    CHECK(Ckpt.readBytesObject("decoder.layers.mlp.experts.experts.linear_fc2._extra_state/shard_1.3_2.4")->repr() ==
          "[None]");

    // Experts: [l, e] rows come from rank e // 2's records.
    std::vector<uint8_t> Fc1 = Ckpt.readTensor("decoder.layers.mlp.experts.experts.linear_fc1.weight");
    const DistTensor &T = Ckpt.tensor("decoder.layers.mlp.experts.experts.linear_fc1.weight");
    auto Slice = [&](const std::vector<uint8_t> &G, int64_t L, int64_t E, int64_t Row0, int64_t Rows) {
      return extractBox(G, T.Shape, {L, E, Row0, 0}, {1, 1, Rows, 64}, 2);
    };
    CHECK(Slice(Fc1, 0, 0, 0, 32) == recordAt(Dir, 0, 122816, 5673).Bytes);
    CHECK(Slice(Fc1, 1, 3, 32, 32) == recordAt(Dir, 1, 49799, 5673).Bytes);
    CHECK(Slice(Fc1, 0, 2, 32, 32) == recordAt(Dir, 1, 15761, 5673).Bytes);
    std::vector<uint8_t> Fc2 = Ckpt.readTensor("decoder.layers.mlp.experts.experts.linear_fc2.weight");
    CHECK(extractBox(Fc2, {2, 4, 64, 32}, {1, 2, 0, 0}, {1, 1, 64, 32}, 2) == recordAt(Dir, 1, 66818, 5673).Bytes);
    std::vector<uint8_t> Router = Ckpt.readTensor("decoder.layers.mlp.router.weight");
    CHECK(std::equal(Router.begin() + 4 * 64 * 2, Router.end(), recordAt(Dir, 0, 120727, 2089).Bytes.begin()));

    PyValuePtr Common = Ckpt.common();
    CHECK(Common->repr() == "{'checkpoint_version': 3.0, 'iteration': 0}");
  }
}

TEST_CASE("torch_dist: synthetic checkpoints assemble exactly, with any tiling") {
  TempDir D;
  SynthCheckpoint C;
  C.Tensors = {
      {"w", DType::BF16, {4, 6}, {{{0, 0}, {2, 3}}, {{0, 3}, {2, 3}, "__1_0.distcp"}, {{2, 0}, {2, 6}}}},
      {"v", DType::F32, {2, 3, 4}, {{{0, 1, 0}, {2, 2, 4}}, {{0, 0, 0}, {2, 1, 4}, "__1_0.distcp"}}},
      {"blocks", DType::I64, {3, 2, 5}, {{{0, 0, 0}, {3, 2, 2}}, {{0, 0, 2}, {1, 2, 3}}, {{1, 0, 2}, {2, 2, 3}}}},
      {"scalar", DType::F32, {}, {{{}, {}}}},
      {"empty", DType::I64, {0, 3}, {{{0, 0}, {0, 3}}}},
      {"optimizer.state.exp_avg.w", DType::F32, {4, 6}, {{{0, 0}, {4, 6}}}},
      {"rng_state", DType::U8, {8}, {{{0}, {8}}}},
  };
  PickleWriter Common;
  Common.emptyList();
  Common.mark();
  Common.emptyDict();
  Common.mark();
  Common.str("checkpoint_version");
  Common.float64(3.0);
  Common.str("iteration");
  Common.integer(1234567);
  Common.setItems();
  Common.appends();
  C.ByteObjects = {{"common_state/shard_0_1", torchSaveArchive(Common.finish(), {})},
                   {"w._extra_state/shard_0_1", listOfNoneArchive(), "__1_0.distcp"}};
  auto Globals = writeSynth(D.Path, C);

  TorchDistCheckpoint Ckpt(D.Path + "/");
  CHECK(Ckpt.directory() == D.Path);
  CHECK(Ckpt.tensorKeys() == std::vector<std::string>{"blocks", "empty", "scalar", "v", "w"});
  CHECK(Ckpt.skippedKeys() == std::vector<std::string>{"optimizer.state.exp_avg.w", "rng_state"});
  CHECK(Ckpt.byteObjectKeys() == std::vector<std::string>{"common_state/shard_0_1", "w._extra_state/shard_0_1"});
  for (const std::string &K : Ckpt.tensorKeys()) {
    CAPTURE(K);
    CHECK(Ckpt.readTensor(K) == Globals[K]);
  }
  CHECK(Ckpt.readTensor("empty").empty());
  CHECK(Ckpt.readTensor("scalar").size() == 4);
  CHECK_ERROR(Ckpt.tensor("optimizer.state.exp_avg.w"), "is not read");
  CHECK(Ckpt.readBytesObject("w._extra_state/shard_0_1")->repr() == "[None]");
  CHECK(Ckpt.common()->repr() == "{'checkpoint_version': 3.0, 'iteration': 1234567}");

  // common.pt, when present, wins (MCore <= 0.18 layout).
  PickleWriter Pt;
  Pt.emptyDict();
  Pt.mark();
  Pt.str("from");
  Pt.str("common.pt");
  Pt.setItems();
  writeFile(D.Path + "/common.pt", torchSaveArchive(Pt.finish(), {}));
  CHECK(Ckpt.common()->repr() == "{'from': 'common.pt'}");
}

TEST_CASE("torch_dist: hostile or broken checkpoints are refused with the file and key named") {
  auto Base = [] {
    SynthCheckpoint C;
    C.Tensors = {{"w", DType::BF16, {4, 6}, {{{0, 0}, {2, 6}}, {{2, 0}, {2, 6}}}}};
    C.ByteObjects = {{"w._extra_state/shard_0_1", listOfNoneArchive()}};
    return C;
  };
  auto Open = [](const SynthCheckpoint &C) {
    TempDir D;
    writeSynth(D.Path, C);
    TorchDistCheckpoint Ckpt(D.Path);
    return Ckpt.readTensor("w");
  };
  REQUIRE(Open(Base()).size() == 4 * 6 * 2);

  SUBCASE("chunk outside the global shape") {
    SynthCheckpoint C = Base();
    C.Tensors[0].Chunks[1] = {{2, 4}, {2, 3}};
    CHECK_ERROR(Open(C), "/.metadata: chunk at offsets (2,4) sizes (2,3) of 'w' lies outside the global shape (4,6)");
  }
  SUBCASE("chunk of the wrong rank") {
    SynthCheckpoint C = Base();
    C.Tensors[0].Chunks[1] = {{2}, {2}};
    CHECK_ERROR(Open(C), "does not have the rank of the global shape");
  }
  SUBCASE("overlapping chunks") {
    SynthCheckpoint C = Base();
    C.Tensors[0].Chunks = {{{0, 0}, {3, 4}}, {{0, 4}, {4, 2}}, {{2, 2}, {2, 2}}, {{3, 0}, {1, 2}}};
    CHECK_ERROR(Open(C), "chunks of 'w' overlap: offsets (0,0) sizes (3,4) and offsets (2,2) sizes (2,2)");
  }
  SUBCASE("identical chunks") {
    SynthCheckpoint C = Base();
    C.Tensors[0].Chunks.push_back({{2, 0}, {2, 6}, "__1_0.distcp"});
    CHECK_ERROR(Open(C), "storage_data entry of 'w' appears twice");
  }
  SUBCASE("a gap in the tiling") {
    SynthCheckpoint C = Base();
    C.Tensors[0].Chunks.pop_back();
    CHECK_ERROR(Open(C), "chunks of 'w' cover 12 of the 24 elements");
  }
  SUBCASE("path traversal in relative_path") {
    for (const char *Path : {"../__0_0.distcp", "..", ".", "sub/__0_0.distcp", "/etc/passwd"}) {
      CAPTURE(Path);
      SynthCheckpoint C = Base();
      C.Tensors[0].Chunks[0].RelativePath = Path;
      CHECK_ERROR(Open(C), "storage record of 'w' has relative_path '" + std::string(Path) +
                               "', which is not a plain file name inside the checkpoint directory");
    }
  }
  SUBCASE("a chunk without a storage_data entry") {
    SynthCheckpoint C = Base();
    C.Tensors[0].Chunks[1].OmitStorage = true;
    CHECK_ERROR(Open(C), "chunk at offsets (2,0) sizes (2,6) of 'w' has no storage_data entry");
  }
  SUBCASE("a record past the end of its file") {
    SynthCheckpoint C = Base();
    C.Tensors[0].Chunks[1].ExtraLength = 100;
    CHECK_ERROR(Open(C), "record of 'w' (offset");
    CHECK_ERROR(Open(C), "lies past the end of '__0_0.distcp'");
  }
  SUBCASE("a record in a missing file") {
    SynthCheckpoint C = Base();
    C.Tensors[0].Chunks[1].RelativePath = "__9_0.distcp";
    CHECK_ERROR(Open(C), "'__9_0.distcp', which is not a file in");
  }
  SUBCASE("a record whose dtype differs from the metadata") {
    SynthCheckpoint C = Base();
    C.Tensors[0].Chunks[1].RecordType = DType::F16;
    CHECK_ERROR(Open(C), "record holds float16 but .metadata says bfloat16");
  }
  SUBCASE("a forbidden global in .metadata") {
    SynthCheckpoint C = Base();
    C.HostileGlobal = true;
    CHECK_ERROR(Open(C), "forbidden global 'os.system'");
  }
  SUBCASE("not torch_dist") {
    SynthCheckpoint C = Base();
    C.MetadataJson = R"({"sharded_backend": "zarr", "sharded_backend_version": 1})";
    CHECK_ERROR(Open(C), "sharded_backend is 'zarr', not 'torch_dist'");
    C.MetadataJson = "{";
    CHECK_ERROR(Open(C), "metadata.json is not valid JSON");
  }
  SUBCASE("missing files") {
    TempDir D;
    CHECK_ERROR(TorchDistCheckpoint(D.Path), "no metadata.json");
    writeFile(D.Path + "/metadata.json", R"({"sharded_backend": "torch_dist"})");
    CHECK_ERROR(TorchDistCheckpoint(D.Path), "no .metadata");
    CHECK_ERROR(TorchDistCheckpoint(D.Path + "/nope"), "not a directory");
  }
  SUBCASE("a truncated .metadata") {
    TempDir D;
    writeSynth(D.Path, Base());
    std::vector<uint8_t> M = readFile(D.Path + "/.metadata");
    writeFile(D.Path + "/.metadata", sv(M).substr(0, M.size() / 2));
    CHECK_ERROR(TorchDistCheckpoint(D.Path), "/.metadata: truncated");
  }
  SUBCASE("dimensions beyond 2^62") {
    SynthCheckpoint C = Base();
    C.Tensors[0].Shape = {int64_t(1) << 62 | 1, 6};
    CHECK_ERROR(Open(C), "/.metadata: global shape of 'w' holds 4611686018427387905, outside [0, 2^62]");
    C = Base();
    C.Tensors[0].Chunks[1] = {{INT64_MAX, 0}, {2, 6}};
    CHECK_ERROR(Open(C), "'w' offset holds 9223372036854775807, outside [0, 2^62]");
  }
  SUBCASE("a record that no longer fits its file is named with its key") {
    TempDir D;
    writeSynth(D.Path, Base());
    TorchDistCheckpoint Ckpt(D.Path);
    uint64_t Size = fs::file_size(D.Path + "/__0_0.distcp");
    // Overflow-safe: offset + length wraps around 2^64.
    for (DistRecord R : {DistRecord{"__0_0.distcp", Size + 1, 0}, DistRecord{"__0_0.distcp", 8, UINT64_MAX - 4},
                         DistRecord{"__0_0.distcp", UINT64_MAX - 4, 8}}) {
      CHECK_ERROR(Ckpt.recordView(R, "w"), "__0_0.distcp: the record of 'w' (offset " + std::to_string(R.Offset));
      CHECK_ERROR(Ckpt.recordView(R, "w"), "lies past the end of the file (" + std::to_string(Size) + " bytes)");
      CHECK_ERROR(Ckpt.readRecord(R, "w"), "lies past the end of the file (" + std::to_string(Size) + " bytes)");
    }
  }
  SUBCASE("a FIFO in place of a .distcp file is an error, not a wait") {
    TempDir D;
    writeSynth(D.Path, Base());
    TorchDistCheckpoint Ckpt(D.Path);
    REQUIRE(::mkfifo((D.Path + "/__7_0.distcp").c_str(), 0600) == 0);
    CHECK_ERROR(Ckpt.readRecord({"__7_0.distcp", 0, 4}, "w"), "is a FIFO, not a regular file");
    CHECK_ERROR(Ckpt.recordView({"__7_0.distcp", 0, 4}, "w"), "is a FIFO, not a regular file");
  }
  SUBCASE("a corrupted record") {
    TempDir D;
    writeSynth(D.Path, Base());
    std::vector<uint8_t> F = readFile(D.Path + "/__0_0.distcp");
    F[F.size() - 3] ^= 0xff; // inside the last record's end of central directory
    writeFile(D.Path + "/__0_0.distcp", sv(F));
    TorchDistCheckpoint Ckpt(D.Path);
    CHECK_ERROR(Ckpt.readTensor("w"), "__0_0.distcp (record of 'w' at byte");
  }
}

TEST_CASE("torch_dist: writers of several processes merge their records into one checkpoint") {
  // Process 0 writes the top half of 'w' and all of 'b'; process 1 the
  // bottom half of 'w' and an extra-state object; process 0 merges.
  std::vector<uint8_t> W(4 * 3 * 2), B(5 * 4);
  for (size_t I = 0; I < W.size(); ++I)
    W[I] = static_cast<uint8_t>(I * 7 + 1);
  for (size_t I = 0; I < B.size(); ++I)
    B[I] = static_cast<uint8_t>(200 - I);
  auto Write = [&](const std::string &Dir, bool Complete, DType SecondType) {
    TorchDistWriter P0(Dir, 2, 1 << 20, 0), P1(Dir, 2, 1 << 20, 1);
    P0.declareTensor("w", DType::BF16, {4, 3});
    P0.addChunk("w", {0, 0}, {2, 3}, W.data(), 12);
    P0.declareTensor("b", DType::F32, {5});
    P0.addChunk("b", {0}, {5}, B.data(), 20);
    P1.declareTensor("w", SecondType, {4, 3});
    if (Complete)
      P1.addChunk("w", {2, 0}, {2, 3}, W.data() + 12, 12);
    P1.addBytes("w._extra_state/shard_0_1", universalExtraStateRecord());
    P0.finishData();
    P1.finishData();
    P0.addRecords(P1.records());
    P0.finishMetadata();
  };
  TempDir D;
  Write(D.Path, true, DType::BF16);
  CHECK(std::filesystem::exists(D.Path + "/__1_0.distcp"));
  TorchDistCheckpoint Ckpt(D.Path);
  CHECK(Ckpt.tensorKeys() == std::vector<std::string>{"b", "w"});
  CHECK(Ckpt.readTensor("w") == W);
  CHECK(Ckpt.readTensor("b") == B);
  CHECK(Ckpt.readBytesObject("w._extra_state/shard_0_1")->repr() == "[tensor(uint8, [4])]");

  TempDir Gap, Mixed;
  CHECK_ERROR(Write(Gap.Path, false, DType::BF16), "the chunks of 'w' do not cover its global shape");
  CHECK_ERROR(Write(Mixed.Path, true, DType::F16), "'w' comes out as float16 in one process and bfloat16");
}
