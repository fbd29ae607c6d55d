//===- HostilePickleTest.cpp - the unpickler's budgets and torch.save views --===//
//
// Issue 17: pickles that are small on disk but ask for gigabytes (storms of
// empty containers, MARKs, memo entries, set() and OrderedDict() copies of
// one big list, declared lengths beyond the input) end in an error naming
// the file, fast; a value of real density still loads. A torch.save tensor
// that reads its storage's elements more than once (stride 0 over 2^30
// elements) is refused before anything is gathered.
//
//===----------------------------------------------------------------------===//
#include "bridge/Error.h"
#include "bridge/Pickle.h"
#include "bridge/Unpickle.h"

#include <doctest/doctest.h>

#include <chrono>
#include <cstring>
#include <string>
#include <vector>

using namespace bridge;
using namespace std::string_literals;

namespace {

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

/// Expects \p Expr to throw a bridge::Error holding \p Substring and naming
/// the file, within \p Seconds.
#define CHECK_FAST_ERROR(Expr, Substring, Seconds)                                                                    \
  do {                                                                                                                 \
    auto T0_ = std::chrono::steady_clock::now();                                                                      \
    std::string Msg_ = errorOf([&] { (void)(Expr); });                                                                 \
    double S_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - T0_).count();                        \
    CHECK_MESSAGE(Msg_.find(Substring) != std::string::npos, "expected '" << (Substring) << "' in: " << Msg_);         \
    CHECK_MESSAGE(Msg_.rfind("error: hostile.pkl: ", 0) == 0, "does not name the file: " << Msg_);                    \
    CHECK_MESSAGE(S_ < (Seconds), "took " << S_ << " s");                                                              \
  } while (0)

std::string proto(int P) { return std::string("\x80", 1) + static_cast<char>(P); }

std::string repeat(std::string_view Piece, size_t N) {
  std::string S;
  S.reserve(Piece.size() * N);
  for (size_t I = 0; I < N; ++I)
    S += Piece;
  return S;
}

const size_t MiB = size_t(1) << 20;

} // namespace

TEST_CASE("unpickle: storms of empty containers are refused by the node budget") {
  GlobalAllowList None;
  // Each of these used to build one node per byte or two (~280 bytes each):
  // 10 MB of them took 2.95 GB.
  CHECK_FAST_ERROR(unpickle(proto(2) + std::string(4 * MiB, ']') + ".", None, "hostile.pkl"), "makes more than", 10);
  CHECK_FAST_ERROR(unpickle(proto(2) + std::string(4 * MiB, '}') + ".", None, "hostile.pkl"), "makes more than", 10);
  CHECK_FAST_ERROR(unpickle(proto(2) + repeat("(l", 2 * MiB) + ".", None, "hostile.pkl"), "makes more than", 10);
  CHECK_FAST_ERROR(unpickle(proto(2) + "]" + repeat("]a", 2 * MiB) + ".", None, "hostile.pkl"), "makes more than",
                   10);
  CHECK_FAST_ERROR(unpickle(proto(2) + "N" + repeat("\x85", 4 * MiB) + ".", None, "hostile.pkl"), "makes more than",
                   10);
  // The message says what the budget is.
  std::string Msg = errorOf([&] { unpickle(proto(2) + std::string(MiB, ']') + ".", None, "hostile.pkl"); });
  CHECK(Msg.find("at most one per " + std::to_string(UnpickleBytesPerNode) + " bytes") != std::string::npos);
}

TEST_CASE("unpickle: memo storms are bounded") {
  GlobalAllowList None;
  // MEMOIZE makes a memo entry per byte without a node.
  CHECK_FAST_ERROR(unpickle(proto(4) + "]" + std::string(4 * MiB, '\x94') + ".", None, "hostile.pkl"), "memo entries",
                   10);
  // Overwriting the same entry is not growth.
  CHECK(unpickle(proto(2) + "]" + repeat(std::string("q\x07", 2), MiB) + ".", None, "hostile.pkl")->is(
      PyValue::Kind::List));
}

TEST_CASE("unpickle: copies of one big list through set() and OrderedDict() are charged") {
  // set(l) copies l's items: a 1 MiB list memoized, then set(l) again and
  // again for 6 bytes each, used to grow without bound.
  std::string Set = proto(2) + "c__builtin__\nset\nq\x00("s + std::string(MiB, 'N') + "lq\x01";
  Set += repeat("h\x00h\x01\x85R0"s, MiB) + "N.";
  CHECK_FAST_ERROR(unpickle(Set, TorchSaveGlobals, "hostile.pkl"), "holding its values would take more than", 10);
  std::string Od = proto(2) + "ccollections\nOrderedDict\nq\x00("s + repeat("NN\x86q\x02", MiB / 4) + "lq\x01";
  Od += repeat("h\x00h\x01\x85R0"s, MiB) + "N.";
  CHECK_FAST_ERROR(unpickle(Od, DcpMetadataGlobals, "hostile.pkl"), "holding its values would take more than", 10);
}

TEST_CASE("unpickle: declared lengths beyond the input are refused before allocating") {
  GlobalAllowList None;
  auto Len = [](char Op, unsigned Bytes, uint64_t N) {
    std::string S = proto(4) + Op;
    for (unsigned B = 0; B < Bytes; ++B)
      S += static_cast<char>(N >> (8 * B));
    return S + "xyz.";
  };
  for (char Op : {'\x8d', '\x8e', '\x96'}) // BINUNICODE8, BINBYTES8, BYTEARRAY8
    for (uint64_t N : {~uint64_t(0), uint64_t(1) << 62, uint64_t(1) << 40, uint64_t(5)})
      CHECK_FAST_ERROR(unpickle(Len(Op, 8, N), None, "hostile.pkl"), "truncated", 1);
  for (char Op : {'X', 'B', 'T'}) // BINUNICODE, BINBYTES, BINSTRING
    CHECK_FAST_ERROR(unpickle(Len(Op, 4, 0xFFFFFFF0u), None, "hostile.pkl"), "", 1);
  for (char Op : {'\x8c', 'C', 'U'}) // SHORT_BINUNICODE, SHORT_BINBYTES, SHORT_BINSTRING
    CHECK_FAST_ERROR(unpickle(Len(Op, 1, 200), None, "hostile.pkl"), "truncated", 1);
  // LONG4 of 2^31-1 bytes, LONG1 of 9: no 64-bit int.
  CHECK_FAST_ERROR(unpickle(Len('\x8b', 4, 0x7FFFFFFF), None, "hostile.pkl"), "does not fit in 64 bits", 1);
  CHECK_FAST_ERROR(unpickle(Len('\x8b', 4, 0xFFFFFFFF), None, "hostile.pkl"), "negative length", 1);
  CHECK_FAST_ERROR(unpickle(Len('\x8a', 1, 9), None, "hostile.pkl"), "does not fit in 64 bits", 1);
  CHECK_FAST_ERROR(unpickle(proto(4) + std::string("\x95\xff\xff\xff\xff\xff\xff\xff\xff", 9) + "K\x01.", None,
                            "hostile.pkl"),
                   "frame of", 1);
}

TEST_CASE("unpickle: values of real density fit the budgets") {
  // 300 000 pairs, each a memoized TUPLE2 of small ints (6 bytes, one node
  // and one memo entry): denser than any checkpoint's pickle measured.
  GlobalAllowList None;
  std::string S = proto(4) + "]\x94(";
  for (int I = 0; I < 300000; ++I) {
    S += 'K';
    S += static_cast<char>(I & 0x7f);
    S += 'K';
    S += static_cast<char>(I >> 12);
    S += "\x86\x94";
  }
  S += "e.";
  PyValuePtr V = unpickle(S, None, "dense.pkl");
  REQUIRE(V->is(PyValue::Kind::List));
  CHECK(V->Items.size() == 300000);
  // Small pickles have a floor of UnpickleMinNodes: 60 000 empty lists in
  // a list (a node per byte) still load.
  PyValuePtr Small = unpickle(proto(2) + "](" + std::string(60000, ']') + "e.", None, "small.pkl");
  CHECK(Small->Items.size() == 60000);
}

// ==== torch.save views =================================================================

namespace {
/// torch.save({'w': tensor}) with a float storage of \p StorageNumel
/// elements and the view (offset, shape, strides).
std::string viewArchive(int64_t StorageNumel, int64_t Offset, const std::vector<int64_t> &Shape,
                        const std::vector<int64_t> &Strides, std::vector<float> &Storage) {
  Storage.assign(static_cast<size_t>(StorageNumel), 1.5f);
  PickleWriter P;
  P.emptyDict();
  P.mark();
  P.str("decoder.layers.0.mlp.linear_fc1.weight");
  P.global("torch._utils", "_rebuild_tensor_v2");
  P.mark();
  P.mark();
  P.str("storage");
  P.global("torch", "FloatStorage");
  P.str("0");
  P.str("cpu");
  P.integer(StorageNumel);
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
  P.setItems();
  return torchSaveArchive(P.finish(),
                          {{"0", reinterpret_cast<const uint8_t *>(Storage.data()), Storage.size() * sizeof(float)}});
}
} // namespace

TEST_CASE("torch.save: a view with more elements than its storage is refused before gathering") {
  std::vector<float> Storage;
  for (bool Borrow : {false, true}) {
    // Stride 0 over 2^30 elements of a one-element storage: 4 GiB gathered
    // from 4 bytes, before.
    std::string A = viewArchive(1, 0, {int64_t(1) << 30}, {0}, Storage);
    auto T0 = std::chrono::steady_clock::now();
    std::string Msg = errorOf([&] { readTorchSave(A, "rank.pt", LegacyCheckpointGlobals, Borrow); });
    CHECK(std::chrono::duration<double>(std::chrono::steady_clock::now() - T0).count() < 1);
    CHECK_MESSAGE(Msg.find("error: rank.pt: tensor 'decoder.layers.0.mlp.linear_fc1.weight': shape [1073741824] "
                           "with strides [0] has 1073741824 elements, more than the 1 of its storage '0'") == 0,
                  Msg);
    // Overlapping strides likewise; a small broadcast inside its storage is fine.
    CHECK(errorOf([&] { readTorchSave(viewArchive(4, 0, {3, 3}, {1, 1}, Storage), "o.pt", TorchSaveGlobals, Borrow); })
              .find("more than the 4 of its storage") != std::string::npos);
    CHECK(readTorchSave(viewArchive(4, 1, {3}, {0}, Storage), "b.pt", TorchSaveGlobals, Borrow)->is(
        PyValue::Kind::Dict));
    // An offset past the storage, even of an empty view.
    CHECK(errorOf([&] {
            readTorchSave(viewArchive(4, int64_t(1) << 60, {0}, {1}, Storage), "e.pt", TorchSaveGlobals, Borrow);
          }).find("storage offset 1152921504606846976 is past the end of storage '0'") != std::string::npos);
  }
}
