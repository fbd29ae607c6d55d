//===- TorchDistReader.cpp - torch_dist checkpoint reader ------------------===//
//
// Everything in '.metadata' is validated when the checkpoint is opened, so
// that a bad checkpoint fails before any tensor is written elsewhere and
// readTensor() only has to trust what was checked: chunk boxes inside the
// global shape, disjoint and covering it, each with a storage record that
// lies inside a plain file of the directory.
//
//===----------------------------------------------------------------------===//
#include "bridge/TorchDistReader.h"
#include "bridge/Files.h"
#include "bridge/StrictJson.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <mutex>
#include <optional>
#include <set>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace bridge {

int64_t DistTensor::numel() const {
  int64_t N = 1;
  for (int64_t D : Shape)
    N *= D;
  return N;
}

namespace {
using Kind = PyValue::Kind;

[[noreturn]] void fail(const std::string &Where, const std::string &Msg) {
  throw Error("error: " + Where + ": " + Msg);
}

std::string dims(const std::vector<int64_t> &D) {
  std::string S = "(";
  for (size_t I = 0; I < D.size(); ++I)
    S += (I ? "," : "") + std::to_string(D[I]);
  return S + (D.size() == 1 ? ",)" : ")");
}

bool startsWith(const std::string &S, std::string_view P) { return S.compare(0, P.size(), P) == 0; }

/// Keys a model export never needs (format reference section 6.3).
bool isSkippedKey(const std::string &K) {
  if (startsWith(K, "optimizer.") || startsWith(K, "rng_state") || startsWith(K, "common_state") ||
      startsWith(K, "rerun_state_machine"))
    return true;
  // Chained optimizers without chained_optim_avoid_prefix: chained_<n>.optimizer.*
  return startsWith(K, "chained_") && K.find(".optimizer.") != std::string::npos;
}

/// Size of a regular file; -1 when it is absent or not a regular file.
int64_t fileSize(const std::string &Path) {
  struct stat St;
  if (::stat(Path.c_str(), &St) != 0 || !S_ISREG(St.st_mode))
    return -1;
  return static_cast<int64_t>(St.st_size);
}

/// The most fields a DCP dataclass's state may have (they have 2 to 6).
constexpr size_t MaxFields = 32;
/// The largest dimension, offset or size .metadata may give (2^62): sums
/// and products of two of them stay inside int64.
constexpr int64_t MaxDim = int64_t(1) << 62;

/// DCP writes a dataclass as NEWOBJ + BUILD(__dict__): its fields are the
/// State dict.
const PyValue &fields(const PyValue &V, const char *Class, const std::string &Where, const std::string &What) {
  if (!V.isObjectOf(Class))
    fail(Where, What + " is " + (V.is(Kind::Object) ? "a " + V.qualifiedName() : V.repr(80)) + ", not a " + Class);
  if (!V.State || !V.State->is(Kind::Dict))
    fail(Where, What + " (" + Class + ") has no field dict");
  // Fields are looked up by a scan; a state dict that many objects share
  // through the memo must not make that scan long.
  if (V.State->Entries.size() > MaxFields)
    fail(Where, What + " (" + Class + ") has " + std::to_string(V.State->Entries.size()) + " fields; a " + Class +
                    " has fewer than " + std::to_string(MaxFields));
  return *V.State;
}

const PyValue &field(const PyValue &Fields, const char *Name, const std::string &Where, const std::string &What) {
  const PyValue *F = Fields.find(Name);
  if (!F)
    fail(Where, What + " has no field '" + Name + "'");
  return *F;
}

int64_t intOf(const PyValue &V, const std::string &Where, const std::string &What) {
  if (!V.is(Kind::Int))
    fail(Where, What + " is " + V.repr(80) + ", not an int");
  return V.Int;
}

const std::string &strOf(const PyValue &V, const std::string &Where, const std::string &What) {
  if (!V.is(Kind::Str))
    fail(Where, What + " is " + V.repr(80) + ", not a string");
  return V.Text;
}

/// torch.Size((d0, d1, ...)), or a plain tuple/list of ints.
std::vector<int64_t> sizeOf(const PyValue &V, const std::string &Where, const std::string &What) {
  const PyValue *T = &V;
  if (V.isObjectOf("torch.Size")) {
    if (!V.Args || V.Args->Items.size() != 1)
      fail(Where, What + ": malformed torch.Size " + V.repr(80));
    T = V.Args->Items[0].get();
  }
  if (!T->is(Kind::Tuple) && !T->is(Kind::List))
    fail(Where, What + " is " + V.repr(80) + ", not a torch.Size");
  std::vector<int64_t> Out;
  for (const PyValuePtr &I : T->Items) {
    int64_t D = intOf(*I, Where, What + " element");
    if (D < 0 || D > MaxDim)
      fail(Where, What + " holds " + std::to_string(D) + ", outside [0, 2^62]");
    Out.push_back(D);
  }
  return Out;
}

/// The dtype in TensorProperties: its state is the tuple (dtype, layout,
/// requires_grad, memory format, pin_memory) since torch 2.2, or a field
/// dict in older releases.
DType dtypeOf(const PyValue &Props, const std::string &Where, const std::string &Key) {
  std::string What = "properties of '" + Key + "'";
  if (!Props.isObjectOf("torch.distributed.checkpoint.metadata.TensorProperties") &&
      !Props.isObjectOf("torch.distributed._shard.sharded_tensor.metadata.TensorProperties"))
    fail(Where, What + " are " + Props.repr(80) + ", not TensorProperties");
  const PyValue *D = nullptr;
  if (Props.State && Props.State->is(Kind::Tuple) && !Props.State->Items.empty())
    D = Props.State->Items[0].get();
  else if (Props.State && Props.State->is(Kind::Dict))
    D = Props.State->find("dtype");
  if (!D)
    fail(Where, What + " carry no dtype");
  if (!D->is(Kind::Global) || D->Text != "torch")
    fail(Where, What + ": dtype is " + D->repr(80) + ", not a torch dtype");
  std::optional<DType> T = dtypeFromTorch(D->Name);
  if (!T)
    fail(Where, "'" + Key + "' has dtype torch." + D->Name + ", which is not supported");
  return *T;
}

/// relative_path must name a file directly inside the checkpoint directory.
void checkPlainFileName(const std::string &Name, const std::string &Where, const std::string &Key) {
  bool Bad = Name.empty() || Name == "." || Name == ".." || Name.find('/') != std::string::npos ||
             Name.find('\\') != std::string::npos || Name.find('\0') != std::string::npos;
  if (Bad)
    fail(Where, "storage record of '" + Key + "' has relative_path '" + Name +
                    "', which is not a plain file name inside the checkpoint directory");
}

/// Copies one chunk (contiguous, sizes \p Sizes) into the global tensor at
/// \p Offsets. Trailing dims the chunk spans completely are merged, so a
/// row-split chunk is a single memcpy.
void placeChunk(uint8_t *Dst, const std::vector<int64_t> &Global, const std::vector<int64_t> &Offsets,
                const std::vector<int64_t> &Sizes, const uint8_t *Src, size_t Elem) {
  size_t Rank = Global.size();
  if (Rank == 0) {
    std::memcpy(Dst, Src, Elem);
    return;
  }
  for (int64_t S : Sizes)
    if (S == 0)
      return;
  std::vector<int64_t> Stride(Rank, 1); // of the global tensor, in elements
  for (size_t D = Rank - 1; D-- > 0;)
    Stride[D] = Stride[D + 1] * Global[D + 1];
  // Dims [K, Rank) form one contiguous run in the destination.
  size_t K = Rank - 1;
  while (K > 0 && Sizes[K] == Global[K])
    --K;
  int64_t Run = Sizes[K] * Stride[K];
  size_t RunBytes = static_cast<size_t>(Run) * Elem;
  int64_t Base = 0;
  for (size_t D = 0; D < Rank; ++D)
    Base += Offsets[D] * Stride[D];
  // Odometer over the outer dims [0, K).
  std::vector<int64_t> Index(K, 0);
  int64_t DstElem = Base;
  while (true) {
    std::memcpy(Dst + DstElem * Elem, Src, RunBytes);
    Src += RunBytes;
    bool Carry = true;
    for (size_t D = K; Carry && D-- > 0;) {
      if (++Index[D] < Sizes[D]) {
        DstElem += Stride[D];
        Carry = false;
      } else {
        DstElem -= (Sizes[D] - 1) * Stride[D];
        Index[D] = 0;
      }
    }
    if (Carry)
      return;
  }
}
} // namespace

// ---- opening ------------------------------------------------------------------------

struct TorchDistCheckpoint::Mappings {
  std::mutex Lock;
  struct Map {
    const uint8_t *Data = nullptr;
    size_t Size = 0;
  };
  std::map<std::string, Map> Files;
  ~Mappings() {
    for (auto &[Name, M] : Files)
      if (M.Data)
        ::munmap(const_cast<uint8_t *>(M.Data), M.Size);
  }
};

TorchDistCheckpoint::TorchDistCheckpoint(const std::string &IterDir)
    : Dir(IterDir), Mapped(std::make_shared<Mappings>()) {
  while (Dir.size() > 1 && Dir.back() == '/')
    Dir.pop_back();
  struct stat St;
  if (::stat(Dir.c_str(), &St) != 0 || !S_ISDIR(St.st_mode))
    fail(Dir, "not a directory");

  std::string JsonPath = Dir + "/metadata.json";
  if (fileSize(JsonPath) < 0)
    fail(Dir, "no metadata.json: not a Megatron-Core dist checkpoint directory");
  MetadataJson = parseJson<Json>(files::readRegularFile(JsonPath, files::kMaxConfigBytes, "metadata.json"), JsonPath,
                                 "metadata.json");
  if (!MetadataJson.is_object() || !MetadataJson.contains("sharded_backend") ||
      !MetadataJson["sharded_backend"].is_string())
    fail(JsonPath, "has no 'sharded_backend' string");
  std::string Backend = MetadataJson["sharded_backend"].get<std::string>();
  if (Backend != "torch_dist")
    fail(JsonPath, "sharded_backend is '" + Backend + "', not 'torch_dist'");

  parseMetadata(Dir + "/.metadata");
}

void TorchDistCheckpoint::parseMetadata(const std::string &Path) {
  if (fileSize(Path) < 0)
    fail(Dir, "no .metadata file: not a torch_dist checkpoint (or an unfinished save)");
  std::string Bytes = files::readRegularFile(Path, files::kMaxMetadataBytes, ".metadata");
  Metadata = unpickle(Bytes, DcpMetadataGlobals, Path);
  const PyValue &M = *Metadata;
  const char *MetaClass = M.isObjectOf("megatron.core.dist_checkpointing.strategies.torch.MCoreMetadata")
                              ? "megatron.core.dist_checkpointing.strategies.torch.MCoreMetadata"
                              : "torch.distributed.checkpoint.metadata.Metadata";
  const PyValue &MF = fields(M, MetaClass, Path, "the pickled value");
  const PyValue &SDM = field(MF, "state_dict_metadata", Path, "Metadata");
  const PyValue &SD = field(MF, "storage_data", Path, "Metadata");
  if (!SDM.is(Kind::Dict) || !SD.is(Kind::Dict))
    fail(Path, "state_dict_metadata and storage_data must be dicts");

  // storage_data: MetadataIndex(fqn, offset) -> _StorageInfo.
  std::map<std::pair<std::string, std::vector<int64_t>>, DistRecord> ChunkRecords;
  std::map<std::string, DistRecord> ByteRecords;
  for (const PyValue::Entry &E : SD.Entries) {
    const PyValue &Index =
        fields(*E.first, "torch.distributed.checkpoint.metadata.MetadataIndex", Path, "a storage_data key");
    const std::string &Fqn = strOf(field(Index, "fqn", Path, "MetadataIndex"), Path, "MetadataIndex fqn");
    std::string What = "storage_data entry of '" + Fqn + "'";
    const PyValue &Info = fields(*E.second, "torch.distributed.checkpoint.filesystem._StorageInfo", Path, What);
    DistRecord R;
    R.File = strOf(field(Info, "relative_path", Path, What), Path, What + " relative_path");
    int64_t Off = intOf(field(Info, "offset", Path, What), Path, What + " offset");
    int64_t Len = intOf(field(Info, "length", Path, What), Path, What + " length");
    if (Off < 0 || Len < 0)
      fail(Path, What + " has a negative offset or length");
    R.Offset = static_cast<uint64_t>(Off);
    R.Length = static_cast<uint64_t>(Len);
    if (const PyValue *T = Info.find("transform_descriptors"))
      if (!T->is(Kind::None) && !((T->is(Kind::List) || T->is(Kind::Tuple)) && T->Items.empty()))
        fail(Path, What + " uses stream transforms " + T->repr(80) + " (e.g. compression), not supported");
    checkPlainFileName(R.File, Path, Fqn);
    // Byte objects have no 'offset' attribute at all; None is accepted too.
    const PyValue *ChunkOffset = Index.find("offset");
    bool Inserted;
    if (!ChunkOffset || ChunkOffset->is(Kind::None))
      Inserted = ByteRecords.emplace(Fqn, R).second;
    else
      Inserted = ChunkRecords.emplace(std::make_pair(Fqn, sizeOf(*ChunkOffset, Path, What + " offset")), R).second;
    if (!Inserted)
      fail(Path, What + " appears twice");
  }

  std::map<std::string, int64_t> FileSizes;
  auto CheckRecord = [&](const DistRecord &R, const std::string &Key) {
    auto It = FileSizes.find(R.File);
    if (It == FileSizes.end())
      It = FileSizes.emplace(R.File, fileSize(Dir + "/" + R.File)).first;
    if (It->second < 0)
      fail(Path, "record of '" + Key + "' is in '" + R.File + "', which is not a file in " + Dir);
    uint64_t Size = static_cast<uint64_t>(It->second);
    if (R.Offset > Size || R.Length > Size - R.Offset)
      fail(Path, "record of '" + Key + "' (offset " + std::to_string(R.Offset) + ", " + std::to_string(R.Length) +
                     " bytes) lies past the end of '" + R.File + "' (" + std::to_string(Size) + " bytes)");
  };

  std::set<std::string> SeenKeys;
  for (const PyValue::Entry &E : SDM.Entries) {
    const std::string &Key = strOf(*E.first, Path, "a state_dict_metadata key");
    if (!SeenKeys.insert(Key).second)
      fail(Path, "key '" + Key + "' appears twice in state_dict_metadata");
    const PyValue &V = *E.second;
    if (V.isObjectOf("torch.distributed.checkpoint.metadata.BytesStorageMetadata")) {
      auto R = ByteRecords.find(Key);
      if (R == ByteRecords.end())
        fail(Path, "byte object '" + Key + "' has no storage_data entry");
      CheckRecord(R->second, Key);
      ByteObjects.emplace(Key, R->second);
      continue;
    }
    const PyValue &TF =
        fields(V, "torch.distributed.checkpoint.metadata.TensorStorageMetadata", Path, "metadata of '" + Key + "'");
    if (isSkippedKey(Key)) {
      // Not read, but its shape is checked like any other.
      std::vector<int64_t> Shape = sizeOf(field(TF, "size", Path, "'" + Key + "'"), Path, "global shape of '" + Key + "'");
      int64_t N = 1;
      for (int64_t D : Shape)
        if (__builtin_mul_overflow(N, D, &N))
          fail(Path, "global shape " + dims(Shape) + " of '" + Key + "' is too large");
      Skipped.push_back(Key);
      continue;
    }
    DistTensor T;
    T.Key = Key;
    T.Type = dtypeOf(field(TF, "properties", Path, "'" + Key + "'"), Path, Key);
    T.Shape = sizeOf(field(TF, "size", Path, "'" + Key + "'"), Path, "global shape of '" + Key + "'");
    for (int64_t D : T.Shape)
      if (D < 0)
        fail(Path, "'" + Key + "' has a negative dimension in " + dims(T.Shape));
    const PyValue &Chunks = field(TF, "chunks", Path, "'" + Key + "'");
    if (!Chunks.is(Kind::List) && !Chunks.is(Kind::Tuple))
      fail(Path, "chunks of '" + Key + "' are not a list");

    // Volumes are bounded by the global numel once each box is inside it.
    int64_t Total = 1;
    __int128 Covered = 0;
    for (int64_t D : T.Shape)
      if (__builtin_mul_overflow(Total, D, &Total))
        fail(Path, "global shape " + dims(T.Shape) + " of '" + Key + "' is too large");
    for (const PyValuePtr &CP : Chunks.Items) {
      const PyValue &CF =
          fields(*CP, "torch.distributed.checkpoint.metadata.ChunkStorageMetadata", Path, "a chunk of '" + Key + "'");
      DistChunk C;
      C.Offsets =
          sizeOf(field(CF, "offsets", Path, "a chunk of '" + Key + "'"), Path, "chunk offsets of '" + Key + "'");
      C.Sizes = sizeOf(field(CF, "sizes", Path, "a chunk of '" + Key + "'"), Path, "chunk sizes of '" + Key + "'");
      std::string Box = "chunk at offsets " + dims(C.Offsets) + " sizes " + dims(C.Sizes) + " of '" + Key + "'";
      if (C.Offsets.size() != T.Shape.size() || C.Sizes.size() != T.Shape.size())
        fail(Path, Box + " does not have the rank of the global shape " + dims(T.Shape));
      __int128 Volume = 1;
      for (size_t D = 0; D < T.Shape.size(); ++D) {
        if (C.Offsets[D] < 0 || C.Sizes[D] < 0 || C.Offsets[D] > T.Shape[D] || C.Sizes[D] > T.Shape[D] - C.Offsets[D])
          fail(Path, Box + " lies outside the global shape " + dims(T.Shape));
        Volume *= C.Sizes[D];
      }
      Covered += Volume;
      auto R = ChunkRecords.find({Key, C.Offsets});
      if (R == ChunkRecords.end())
        fail(Path, Box + " has no storage_data entry");
      CheckRecord(R->second, Key);
      C.Record = R->second;
      T.Chunks.push_back(std::move(C));
    }

    // Disjointness: sweep along dim 0; only boxes whose dim-0 ranges meet
    // are compared, which for real tilings (per layer, per TP rank) is a
    // handful each.
    auto Empty = [](const DistChunk &C) {
      return std::any_of(C.Sizes.begin(), C.Sizes.end(), [](int64_t S) { return S == 0; });
    };
    auto Meet = [&](const DistChunk &A, const DistChunk &B) {
      for (size_t D = 0; D < T.Shape.size(); ++D)
        if (A.Offsets[D] >= B.Offsets[D] + B.Sizes[D] || B.Offsets[D] >= A.Offsets[D] + A.Sizes[D])
          return false;
      return true;
    };
    std::vector<size_t> Order;
    for (size_t I = 0; I < T.Chunks.size(); ++I)
      if (!Empty(T.Chunks[I]))
        Order.push_back(I);
    auto Start = [&](size_t I) { return T.Shape.empty() ? 0 : T.Chunks[I].Offsets[0]; };
    auto End = [&](size_t I) { return T.Shape.empty() ? 1 : T.Chunks[I].Offsets[0] + T.Chunks[I].Sizes[0]; };
    std::stable_sort(Order.begin(), Order.end(), [&](size_t A, size_t B) { return Start(A) < Start(B); });
    std::vector<size_t> Active;
    for (size_t I : Order) {
      Active.erase(std::remove_if(Active.begin(), Active.end(), [&](size_t A) { return End(A) <= Start(I); }),
                   Active.end());
      for (size_t A : Active)
        if (Meet(T.Chunks[A], T.Chunks[I]))
          fail(Path, "chunks of '" + Key + "' overlap: offsets " + dims(T.Chunks[A].Offsets) + " sizes " +
                         dims(T.Chunks[A].Sizes) + " and offsets " + dims(T.Chunks[I].Offsets) + " sizes " +
                         dims(T.Chunks[I].Sizes));
      Active.push_back(I);
    }
    // Disjoint boxes inside the shape cover it exactly when volumes add up.
    // DCP itself would leave a gap silently at its initial values.
    if (Covered != Total)
      fail(Path, "chunks of '" + Key + "' cover " + std::to_string(static_cast<int64_t>(Covered)) + " of the " +
                     std::to_string(Total) + " elements of its global shape " + dims(T.Shape));
    int64_t Bytes;
    if (__builtin_mul_overflow(Total, static_cast<int64_t>(dtypeSize(T.Type)), &Bytes))
      fail(Path, "'" + Key + "' is too large");
    Tensors.emplace(Key, std::move(T));
  }
  std::sort(Skipped.begin(), Skipped.end());
}

// ---- reading ------------------------------------------------------------------------

std::vector<std::string> TorchDistCheckpoint::tensorKeys() const {
  std::vector<std::string> Keys;
  for (const auto &KV : Tensors)
    Keys.push_back(KV.first);
  return Keys;
}

std::vector<std::string> TorchDistCheckpoint::byteObjectKeys() const {
  std::vector<std::string> Keys;
  for (const auto &KV : ByteObjects)
    Keys.push_back(KV.first);
  return Keys;
}

const DistTensor &TorchDistCheckpoint::tensor(const std::string &Key) const {
  auto It = Tensors.find(Key);
  if (It == Tensors.end()) {
    std::string Why = ByteObjects.count(Key) ? " (it is a byte object)"
                      : std::binary_search(Skipped.begin(), Skipped.end(), Key)
                          ? " (optimizer/RNG/common state is not read)"
                          : "";
    fail(Dir + "/.metadata", "no tensor '" + Key + "'" + Why);
  }
  return It->second;
}

std::string TorchDistCheckpoint::recordWhere(const DistRecord &R, const std::string &Key) const {
  return Dir + "/" + R.File + " (record of '" + Key + "' at byte " + std::to_string(R.Offset) + ")";
}

namespace {
/// Fails unless [Offset, Offset + Length) lies inside a file of \p Size
/// bytes (overflow-safe).
void checkInside(const DistRecord &R, uint64_t Size, const std::string &Path, const std::string &Key) {
  if (R.Offset > Size || R.Length > Size - R.Offset)
    fail(Path, "the record" + (Key.empty() ? std::string() : " of '" + Key + "'") + " (offset " +
                   std::to_string(R.Offset) + ", " + std::to_string(R.Length) + " bytes) lies past the end of the file (" +
                   std::to_string(Size) + " bytes)");
}
} // namespace

std::string_view TorchDistCheckpoint::recordView(const DistRecord &R, const std::string &Key) const {
  std::lock_guard<std::mutex> G(Mapped->Lock);
  std::string Path = Dir + "/" + R.File;
  auto It = Mapped->Files.find(R.File);
  if (It == Mapped->Files.end()) {
    uint64_t Size = 0;
    int Fd = files::openRegularFile(Path, "checkpoint file", Size);
    Mappings::Map M;
    if (Size == 0 || Size > SIZE_MAX) {
      ::close(Fd);
      fail(Path, Size == 0 ? "is empty" : "is too large to map");
    }
    void *P = ::mmap(nullptr, static_cast<size_t>(Size), PROT_READ, MAP_PRIVATE, Fd, 0);
    int E = errno;
    ::close(Fd);
    if (P == MAP_FAILED) // not remembered: a later call tries again
      fail(Path, std::string("cannot map: ") + std::strerror(E));
    M.Data = static_cast<const uint8_t *>(P);
    M.Size = static_cast<size_t>(Size);
    It = Mapped->Files.emplace(R.File, M).first;
  }
  const Mappings::Map &M = It->second;
  checkInside(R, M.Size, Path, Key);
  return std::string_view(reinterpret_cast<const char *>(M.Data + R.Offset), static_cast<size_t>(R.Length));
}

std::vector<uint8_t> TorchDistCheckpoint::readRecord(const DistRecord &R, const std::string &Key) const {
  std::string Path = Dir + "/" + R.File;
  uint64_t Size = 0;
  int Fd = files::openRegularFile(Path, "checkpoint file", Size);
  if (R.Offset > Size || R.Length > Size - R.Offset) {
    ::close(Fd);
    checkInside(R, Size, Path, Key);
  }
  std::vector<uint8_t> Out(static_cast<size_t>(R.Length));
  size_t Done = 0;
  while (Done < Out.size()) {
    ssize_t N = ::pread(Fd, Out.data() + Done, Out.size() - Done, static_cast<off_t>(R.Offset + Done));
    if (N < 0 && errno == EINTR)
      continue;
    if (N <= 0) {
      int E = N < 0 ? errno : 0;
      ::close(Fd);
      fail(Path, "cannot read the record" + (Key.empty() ? std::string() : " of '" + Key + "'") + " (bytes " +
                     std::to_string(R.Offset) + ".." + std::to_string(R.Offset + R.Length) + ")" +
                     (E ? std::string(": ") + std::strerror(E) : std::string(": the file ends first")));
    }
    Done += static_cast<size_t>(N);
  }
  ::close(Fd);
  return Out;
}

TensorRecord TorchDistCheckpoint::readChunk(const std::string &Key, size_t Index) const {
  return chunkRecord(Key, Index, /*Borrow=*/false);
}

TensorRecord TorchDistCheckpoint::chunkRecord(const std::string &Key, size_t Index, bool Borrow) const {
  const DistTensor &T = tensor(Key);
  if (Index >= T.Chunks.size())
    fail(Dir + "/.metadata", "'" + Key + "' has no chunk " + std::to_string(Index));
  const DistChunk &C = T.Chunks[Index];
  std::string Where = recordWhere(C.Record, Key);
  // Borrowed: a contiguous record's elements stay in the mapped file.
  TensorRecord R = readTorchSaveTensor(recordView(C.Record, Key), Where, Borrow);
  if (R.Type != T.Type)
    fail(Where,
         "record holds " + std::string(torchName(R.Type)) + " but .metadata says " + std::string(torchName(T.Type)));
  if (R.Shape != C.Sizes)
    fail(Where, "record has shape " + dims(R.Shape) + " but the chunk at offsets " + dims(C.Offsets) + " has sizes " +
                    dims(C.Sizes));
  return R;
}

std::vector<uint8_t> TorchDistCheckpoint::readTensor(const std::string &Key) const {
  const DistTensor &T = tensor(Key);
  size_t Elem = dtypeSize(T.Type);
  std::vector<uint8_t> Out(static_cast<size_t>(T.numel()) * Elem);
  for (size_t I = 0; I < T.Chunks.size(); ++I) {
    const DistChunk &C = T.Chunks[I];
    TensorRecord R = chunkRecord(Key, I, /*Borrow=*/true);
    placeChunk(Out.data(), T.Shape, C.Offsets, C.Sizes, R.data(), Elem);
  }
  return Out;
}

namespace {
/// Whether chunk \p C holds index \p Prefix of the leading dims; if so, the
/// byte offset of that block within the chunk's data (leading dims fixed,
/// the block is one contiguous run).
std::optional<uint64_t> blockAt(const DistChunk &C, const std::vector<int64_t> &Prefix, size_t Elem) {
  uint64_t Skip = 0, Block = Elem;
  for (size_t D = 0; D < Prefix.size(); ++D) {
    if (Prefix[D] < C.Offsets[D] || Prefix[D] >= C.Offsets[D] + C.Sizes[D])
      return std::nullopt;
    Skip = Skip * static_cast<uint64_t>(C.Sizes[D]) + static_cast<uint64_t>(Prefix[D] - C.Offsets[D]);
  }
  for (size_t D = Prefix.size(); D < C.Sizes.size(); ++D)
    Block *= static_cast<uint64_t>(C.Sizes[D]);
  return Skip * Block;
}
} // namespace

std::vector<uint8_t> TorchDistCheckpoint::readTensorAt(const std::string &Key,
                                                      const std::vector<int64_t> &Prefix) const {
  const DistTensor &T = tensor(Key);
  size_t P = Prefix.size(), Elem = dtypeSize(T.Type);
  if (P > T.Shape.size())
    fail(Dir + "/.metadata", "'" + Key + "' has fewer than " + std::to_string(P) + " dims");
  std::vector<int64_t> Sub(T.Shape.begin() + static_cast<std::ptrdiff_t>(P), T.Shape.end());
  uint64_t Numel = 1;
  for (size_t D = 0; D < P; ++D)
    if (Prefix[D] < 0 || Prefix[D] >= T.Shape[D])
      fail(Dir + "/.metadata", "index " + std::to_string(Prefix[D]) + " is outside dim " + std::to_string(D) +
                                   " of '" + Key + "'");
  for (int64_t D : Sub)
    Numel *= static_cast<uint64_t>(D);
  std::vector<uint8_t> Out(Numel * Elem);
  for (size_t I = 0; I < T.Chunks.size(); ++I) {
    const DistChunk &C = T.Chunks[I];
    std::optional<uint64_t> At = blockAt(C, Prefix, Elem);
    if (!At)
      continue;
    TensorRecord R = chunkRecord(Key, I, /*Borrow=*/true);
    std::vector<int64_t> Offsets(C.Offsets.begin() + static_cast<std::ptrdiff_t>(P), C.Offsets.end()),
        Sizes(C.Sizes.begin() + static_cast<std::ptrdiff_t>(P), C.Sizes.end());
    placeChunk(Out.data(), Sub, Offsets, Sizes, R.data() + *At, Elem);
  }
  return Out;
}

const uint8_t *TorchDistCheckpoint::viewTensorAt(const std::string &Key, const std::vector<int64_t> &Prefix) const {
  const DistTensor &T = tensor(Key);
  if (Prefix.size() > T.Shape.size())
    return nullptr;
  for (size_t I = 0; I < T.Chunks.size(); ++I) {
    const DistChunk &C = T.Chunks[I];
    std::optional<uint64_t> At = blockAt(C, Prefix, dtypeSize(T.Type));
    if (!At)
      continue;
    for (size_t D = Prefix.size(); D < T.Shape.size(); ++D)
      if (C.Offsets[D] != 0 || C.Sizes[D] != T.Shape[D])
        return nullptr; // several chunks make it up
    TensorRecord R = chunkRecord(Key, I, /*Borrow=*/true);
    // A strided record is gathered by readTensorAt instead.
    return R.Borrowed ? R.Borrowed + *At : nullptr;
  }
  return nullptr;
}

PyValuePtr TorchDistCheckpoint::readBytesObject(const std::string &Key, const GlobalAllowList &Allowed) const {
  auto It = ByteObjects.find(Key);
  if (It == ByteObjects.end())
    fail(Dir + "/.metadata", "no byte object '" + Key + "'");
  std::vector<uint8_t> Bytes = readRecord(It->second, Key);
  return readTorchSave(std::string_view(reinterpret_cast<const char *>(Bytes.data()), Bytes.size()),
                       recordWhere(It->second, Key), Allowed);
}

PyValuePtr TorchDistCheckpoint::common(const GlobalAllowList &Allowed) const {
  std::string CommonPt = Dir + "/common.pt";
  if (fileSize(CommonPt) >= 0)
    return readTorchSave(files::readRegularFile(CommonPt, files::kMaxMetadataBytes, "common.pt"), CommonPt, Allowed);
  const std::string Key = "common_state/shard_0_1";
  if (!ByteObjects.count(Key))
    fail(Dir, "no common.pt and no '" + Key + "' byte object: the checkpoint has no common state");
  PyValuePtr V = readBytesObject(Key, Allowed);
  if (!V->is(Kind::List) || V->Items.size() != 1)
    fail(recordWhere(ByteObjects.at(Key), Key), "expected torch.save([common dict]), found " + V->repr(80));
  return V->Items[0];
}

} // namespace bridge
