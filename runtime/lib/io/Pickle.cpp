//===- Pickle.cpp - pickle opcodes and torch.save zip archives -------------===//
#include "bridge/Pickle.h"

#include <functional>

#include <array>
#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <cstring>

namespace bridge {

PickleWriter::PickleWriter() { Out += "\x80\x02"; }

void PickleWriter::global(std::string_view Module, std::string_view Name) {
  Out += 'c';
  Out += Module;
  Out += '\n';
  Out += Name;
  Out += '\n';
}

void PickleWriter::none() { Out += 'N'; }
void PickleWriter::boolean(bool V) { Out += V ? '\x88' : '\x89'; }

void PickleWriter::integer(int64_t V) {
  if (V >= 0 && V < 256) {
    Out += 'K';
    Out += static_cast<char>(V);
  } else if (V >= 0 && V < 65536) {
    Out += 'M';
    Out += static_cast<char>(V & 0xff);
    Out += static_cast<char>(V >> 8);
  } else if (V >= INT32_MIN && V <= INT32_MAX) {
    Out += 'J';
    uint32_t U = static_cast<uint32_t>(static_cast<int32_t>(V));
    for (int I = 0; I < 4; ++I)
      Out += static_cast<char>((U >> (8 * I)) & 0xff);
  } else {
    // LONG1: little-endian two's complement, 8 bytes is always enough.
    Out += '\x8a';
    Out += '\x08';
    uint64_t U = static_cast<uint64_t>(V);
    for (int I = 0; I < 8; ++I)
      Out += static_cast<char>((U >> (8 * I)) & 0xff);
  }
}

void PickleWriter::float64(double V) {
  Out += 'G';
  uint64_t U;
  std::memcpy(&U, &V, 8);
  for (int I = 7; I >= 0; --I) // big-endian
    Out += static_cast<char>((U >> (8 * I)) & 0xff);
}

void PickleWriter::str(std::string_view S) {
  Out += 'X';
  uint32_t N = static_cast<uint32_t>(S.size());
  for (int I = 0; I < 4; ++I)
    Out += static_cast<char>((N >> (8 * I)) & 0xff);
  Out += S;
}

void PickleWriter::mark() { Out += '('; }
void PickleWriter::tuple() { Out += 't'; }
void PickleWriter::emptyTuple() { Out += ')'; }
void PickleWriter::emptyDict() { Out += '}'; }
void PickleWriter::setItems() { Out += 'u'; }
void PickleWriter::emptyList() { Out += ']'; }
void PickleWriter::appends() { Out += 'e'; }
void PickleWriter::newObj() { Out += '\x81'; }
void PickleWriter::build() { Out += 'b'; }
void PickleWriter::reduce() { Out += 'R'; }
void PickleWriter::persistentId() { Out += 'Q'; }

void PickleWriter::torchSize(const std::vector<int64_t> &Dims) {
  global("torch", "Size");
  mark();
  mark();
  for (int64_t D : Dims)
    integer(D);
  tuple();
  tuple();
  reduce();
}

void PickleWriter::tensor(DType Type, const std::string &Key, int64_t Numel, const std::vector<int64_t> &Shape) {
  global("torch._utils", "_rebuild_tensor_v2");
  mark();
  // The persistent id of the storage: ('storage', <Storage class>, key, location, numel).
  mark();
  str("storage");
  global("torch", storageName(Type));
  str(Key);
  str("cpu");
  integer(Numel);
  tuple();
  persistentId();
  integer(0); // storage offset
  mark();
  for (int64_t D : Shape)
    integer(D);
  tuple();
  // Contiguous strides.
  std::vector<int64_t> Strides(Shape.size());
  int64_t S = 1;
  for (size_t I = Shape.size(); I-- > 0;) {
    Strides[I] = S;
    S *= Shape[I] ? Shape[I] : 1;
  }
  mark();
  for (int64_t St : Strides)
    integer(St);
  tuple();
  boolean(false); // requires_grad
  global("collections", "OrderedDict");
  emptyTuple();
  reduce(); // backward hooks
  tuple();
  reduce();
}

std::string PickleWriter::finish() {
  Out += '.';
  return std::move(Out);
}

// ---- zip ---------------------------------------------------------------------------
namespace {
void put16(std::string &S, uint32_t V) {
  S += static_cast<char>(V & 0xff);
  S += static_cast<char>((V >> 8) & 0xff);
}
void put32(std::string &S, uint32_t V) {
  for (int I = 0; I < 4; ++I)
    S += static_cast<char>((V >> (8 * I)) & 0xff);
}
void put64(std::string &S, uint64_t V) {
  for (int I = 0; I < 8; ++I)
    S += static_cast<char>((V >> (8 * I)) & 0xff);
}


} // namespace

namespace {

/// Slicing-by-8 over the reflected polynomial 0xEDB88320, on the raw state
/// (no pre- or post-inversion).
uint32_t crc32Table(uint32_t C, const uint8_t *D, uint64_t N) {
  static const auto Tables = [] {
    std::array<std::array<uint32_t, 256>, 8> T{};
    for (uint32_t I = 0; I < 256; ++I) {
      uint32_t X = I;
      for (int K = 0; K < 8; ++K)
        X = (X & 1) ? 0xEDB88320u ^ (X >> 1) : X >> 1;
      T[0][I] = X;
    }
    for (uint32_t I = 0; I < 256; ++I)
      for (int S = 1; S < 8; ++S)
        T[S][I] = (T[S - 1][I] >> 8) ^ T[0][T[S - 1][I] & 0xff];
    return T;
  }();
  while (N >= 8) {
    uint32_t Lo, Hi;
    std::memcpy(&Lo, D, 4);
    std::memcpy(&Hi, D + 4, 4);
    Lo ^= C;
    C = Tables[7][Lo & 0xff] ^ Tables[6][(Lo >> 8) & 0xff] ^ Tables[5][(Lo >> 16) & 0xff] ^ Tables[4][Lo >> 24] ^
        Tables[3][Hi & 0xff] ^ Tables[2][(Hi >> 8) & 0xff] ^ Tables[1][(Hi >> 16) & 0xff] ^ Tables[0][Hi >> 24];
    D += 8;
    N -= 8;
  }
  while (N--)
    C = Tables[0][(C ^ *D++) & 0xff] ^ (C >> 8);
  return C;
}

#if defined(__x86_64__)
// (Helpers rather than lambdas: a lambda does not inherit the target.)
__attribute__((target("pclmul,sse4.1"))) inline __m128i load16(const uint8_t *P) {
  return _mm_loadu_si128(reinterpret_cast<const __m128i *>(P));
}
/// X's low half times K's low half plus X's high half times K's high half.
__attribute__((target("pclmul,sse4.1"))) inline __m128i fold(__m128i X, __m128i K) {
  return _mm_xor_si128(_mm_clmulepi64_si128(X, K, 0x00), _mm_clmulepi64_si128(X, K, 0x11));
}

/// Carry-less multiply folding (Gopal et al., Intel, "Fast CRC computation
/// for generic polynomials using PCLMULQDQ"): four 128-bit lanes folded 64
/// bytes at a time, then into one lane, then a Barrett reduction to 32 bits.
/// The constants are x^k mod P for the reflected polynomial, bit-reflected.
/// \p N is a multiple of 16 and at least 64; raw state in and out.
__attribute__((target("pclmul,sse4.1"))) uint32_t crc32Clmul(uint32_t C, const uint8_t *D, uint64_t N) {
  const __m128i K1K2 = _mm_set_epi64x(0x1c6e41596, 0x154442bd4); // fold by 512 bits
  const __m128i K3K4 = _mm_set_epi64x(0x0ccaa009e, 0x1751997d0); // fold by 128 bits
  const __m128i K5 = _mm_set_epi64x(0, 0x163cd6124);             // 64 -> 32 bits
  const __m128i Poly = _mm_set_epi64x(0x1f7011641, 0x1db710641); // mu, P'
  const __m128i Mask32 = _mm_set_epi32(0, 0, 0, -1);
  __m128i X1 = _mm_xor_si128(load16(D), _mm_cvtsi32_si128(static_cast<int>(C)));
  __m128i X2 = load16(D + 16), X3 = load16(D + 32), X4 = load16(D + 48);
  D += 64;
  N -= 64;
  for (; N >= 64; D += 64, N -= 64) {
    X1 = _mm_xor_si128(fold(X1, K1K2), load16(D));
    X2 = _mm_xor_si128(fold(X2, K1K2), load16(D + 16));
    X3 = _mm_xor_si128(fold(X3, K1K2), load16(D + 32));
    X4 = _mm_xor_si128(fold(X4, K1K2), load16(D + 48));
  }
  X1 = _mm_xor_si128(fold(X1, K3K4), X2);
  X1 = _mm_xor_si128(fold(X1, K3K4), X3);
  X1 = _mm_xor_si128(fold(X1, K3K4), X4);
  for (; N >= 16; D += 16, N -= 16)
    X1 = _mm_xor_si128(fold(X1, K3K4), load16(D));
  // 128 -> 64 bits: the low half times K4, plus the high half.
  X1 = _mm_xor_si128(_mm_clmulepi64_si128(X1, K3K4, 0x10), _mm_srli_si128(X1, 8));
  // 64 -> 32 bits.
  X1 = _mm_xor_si128(_mm_clmulepi64_si128(_mm_and_si128(X1, Mask32), K5, 0x00), _mm_srli_si128(X1, 4));
  // Barrett reduction: T1 = floor(R / P) by mu, then R - T1 * P.
  __m128i T = _mm_clmulepi64_si128(_mm_and_si128(X1, Mask32), Poly, 0x10);
  T = _mm_clmulepi64_si128(_mm_and_si128(T, Mask32), Poly, 0x00);
  return static_cast<uint32_t>(_mm_extract_epi32(_mm_xor_si128(X1, T), 1));
}

bool haveClmul() {
  static const bool Have = __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
  return Have;
}
#endif

} // namespace

uint32_t crc32Portable(const uint8_t *D, uint64_t N) { return ~crc32Table(0xFFFFFFFFu, D, N); }

uint32_t crc32(const uint8_t *D, uint64_t N) { return crc32Update(0, D, N); }

uint32_t crc32Update(uint32_t Crc, const uint8_t *D, uint64_t N) {
  uint32_t C = ~Crc;
#if defined(__x86_64__)
  if (N >= 64 && haveClmul()) {
    uint64_t Bulk = N & ~uint64_t(15);
    C = crc32Clmul(C, D, Bulk);
    D += Bulk;
    N -= Bulk;
  }
#endif
  return ~crc32Table(C, D, N);
}



TorchSaveWriter::TorchSaveWriter(std::function<void(const void *, size_t)> Sink, bool Checksums)
    : Sink(std::move(Sink)), Checksums(Checksums) {}

void TorchSaveWriter::flush() {
  if (!Z.empty())
    Sink(Z.data(), Z.size());
  Flushed += Z.size();
  Z.clear();
}

void TorchSaveWriter::add(const std::string &Name, const void *Bytes, uint64_t Size) {
  const uint8_t *Data = static_cast<const uint8_t *>(Bytes);
  Entries.push_back({"archive/" + Name, Size, Checksums ? crc32(Data, Size) : 0u, 0});
  Entry &E = Entries.back();
  auto Pos = [&] { return Flushed + Z.size(); };
  E.HeaderOffset = Pos();
  bool Big = E.Size >= 0xFFFFFFFFull;
  // Local header length before the extra field, to align data at 64 bytes.
  size_t Fixed = 30 + E.Name.size() + (Big ? 20 : 0);
  size_t Pad = (64 - (Pos() + Fixed + 4) % 64) % 64;
  put32(Z, 0x04034b50);
  put16(Z, Big ? 45 : 20);
  put16(Z, 0);      // flags
  put16(Z, 0);      // stored
  put16(Z, 0);      // time
  put16(Z, 0x21);   // date: 1980-01-01
  put32(Z, E.Crc);
  put32(Z, Big ? 0xFFFFFFFFu : static_cast<uint32_t>(E.Size));
  put32(Z, Big ? 0xFFFFFFFFu : static_cast<uint32_t>(E.Size));
  put16(Z, static_cast<uint32_t>(E.Name.size()));
  put16(Z, static_cast<uint32_t>((Big ? 20 : 0) + 4 + Pad));
  Z += E.Name;
  if (Big) {
    put16(Z, 0x0001);
    put16(Z, 16);
    put64(Z, E.Size);
    put64(Z, E.Size);
  }
  put16(Z, 0x4246); // "FB": padding, as torch.save aligns storages
  put16(Z, static_cast<uint32_t>(Pad));
  Z.append(Pad, 'Z');
  flush();
  if (Size)
    Sink(Data, Size);
  Flushed += E.Size;
}

void TorchSaveWriter::addTorchRecords(const std::string &Pickle) {
  static const char Version[] = "3\n";
  static const char ByteOrder[] = "little";
  static const char SerializationId[] = "0000000000000000000000000000000000000000";
  add("data.pkl", Pickle.data(), Pickle.size());
  add("byteorder", ByteOrder, sizeof(ByteOrder) - 1);
  add("version", Version, sizeof(Version) - 1);
  add(".data/serialization_id", SerializationId, sizeof(SerializationId) - 1);
}

uint64_t TorchSaveWriter::finish() {
  auto Pos = [&] { return Flushed + Z.size(); };
  uint64_t CdOffset = Pos();
  for (const Entry &E : Entries) {
    bool BigSize = E.Size >= 0xFFFFFFFFull, BigOff = E.HeaderOffset >= 0xFFFFFFFFull;
    std::string Extra;
    if (BigSize || BigOff) {
      put16(Extra, 0x0001);
      put16(Extra, (BigSize ? 16 : 0) + (BigOff ? 8 : 0));
      if (BigSize) {
        put64(Extra, E.Size);
        put64(Extra, E.Size);
      }
      if (BigOff)
        put64(Extra, E.HeaderOffset);
    }
    put32(Z, 0x02014b50);
    put16(Z, 45); // made by
    put16(Z, (BigSize || BigOff) ? 45 : 20);
    put16(Z, 0);
    put16(Z, 0);
    put16(Z, 0);
    put16(Z, 0x21);
    put32(Z, E.Crc);
    put32(Z, BigSize ? 0xFFFFFFFFu : static_cast<uint32_t>(E.Size));
    put32(Z, BigSize ? 0xFFFFFFFFu : static_cast<uint32_t>(E.Size));
    put16(Z, static_cast<uint32_t>(E.Name.size()));
    put16(Z, static_cast<uint32_t>(Extra.size()));
    put16(Z, 0); // comment
    put16(Z, 0); // disk
    put16(Z, 0); // internal attributes
    put32(Z, 0); // external attributes
    put32(Z, BigOff ? 0xFFFFFFFFu : static_cast<uint32_t>(E.HeaderOffset));
    Z += E.Name;
    Z += Extra;
  }
  uint64_t CdSize = Pos() - CdOffset;
  bool Zip64 = CdOffset >= 0xFFFFFFFFull;
  for (const Entry &E : Entries)
    Zip64 |= E.Size >= 0xFFFFFFFFull;
  if (Zip64) {
    uint64_t Eocd64 = Pos();
    put32(Z, 0x06064b50);
    put64(Z, 44);
    put16(Z, 45);
    put16(Z, 45);
    put32(Z, 0);
    put32(Z, 0);
    put64(Z, Entries.size());
    put64(Z, Entries.size());
    put64(Z, CdSize);
    put64(Z, CdOffset);
    put32(Z, 0x07064b50); // locator
    put32(Z, 0);
    put64(Z, Eocd64);
    put32(Z, 1);
  }
  put32(Z, 0x06054b50);
  put16(Z, 0);
  put16(Z, 0);
  put16(Z, static_cast<uint32_t>(Entries.size()));
  put16(Z, static_cast<uint32_t>(Entries.size()));
  put32(Z, Zip64 ? 0xFFFFFFFFu : static_cast<uint32_t>(CdSize));
  put32(Z, Zip64 ? 0xFFFFFFFFu : static_cast<uint32_t>(CdOffset));
  put16(Z, 0);
  flush();
  return Flushed;
}

uint64_t writeTorchSaveArchive(const std::string &Pickle, const std::vector<StorageBytes> &Storages,
                               const std::function<void(const void *, size_t)> &Sink, bool Checksums) {
  TorchSaveWriter W(Sink, Checksums);
  W.addTorchRecords(Pickle);
  for (const StorageBytes &S : Storages)
    W.add("data/" + S.Key, S.Data, S.Size);
  return W.finish();
}

std::string torchSaveArchive(const std::string &Pickle, const std::vector<StorageBytes> &Storages) {
  std::string Out;
  writeTorchSaveArchive(Pickle, Storages, [&](const void *D, size_t N) {
    Out.append(static_cast<const char *>(D), N);
  });
  return Out;
}

} // namespace bridge
