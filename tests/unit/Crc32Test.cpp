// CRC-32 as zip writes it: the carry-less multiply path against the check
// value of the standard and against the table path at every length and
// alignment around its 64- and 16-byte steps.
#include "bridge/Files.h"
#include "bridge/Pickle.h"

#include <doctest/doctest.h>

#include <cstdlib>
#include <cstring>
#include <random>
#include <unistd.h>
#include <vector>

using namespace bridge;

TEST_CASE("crc32 check value and empty input") {
  const char *Check = "123456789";
  CHECK(crc32(reinterpret_cast<const uint8_t *>(Check), 9) == 0xCBF43926u);
  CHECK(crc32Portable(reinterpret_cast<const uint8_t *>(Check), 9) == 0xCBF43926u);
  CHECK(crc32(nullptr, 0) == 0u);
  // 64 zero bytes, the smallest input the folding path takes.
  std::vector<uint8_t> Zeros(64, 0);
  CHECK(crc32(Zeros.data(), Zeros.size()) == 0x758D6336u);
}

TEST_CASE("crc32 equals the table path at every length and alignment") {
  std::mt19937_64 Rng(7);
  std::vector<uint8_t> Buf(4096 + 64);
  for (auto &B : Buf)
    B = static_cast<uint8_t>(Rng());
  for (size_t Align = 0; Align < 16; Align += 5)
    for (size_t N = 0; N <= 1100; ++N)
      REQUIRE(crc32(Buf.data() + Align, N) == crc32Portable(Buf.data() + Align, N));
  for (size_t N : {2047u, 2048u, 4095u, 4096u})
    CHECK(crc32(Buf.data() + 3, N) == crc32Portable(Buf.data() + 3, N));
  // All-ones data exercises every carry of the folds.
  std::vector<uint8_t> Ones(1000, 0xFF);
  CHECK(crc32(Ones.data(), Ones.size()) == crc32Portable(Ones.data(), Ones.size()));
}

TEST_CASE("crc32Update continues a checksum: pieces give the whole's CRC") {
  std::mt19937_64 Rng(11);
  std::vector<uint8_t> Buf(3000);
  for (auto &B : Buf)
    B = static_cast<uint8_t>(Rng());
  const uint32_t Whole = crc32(Buf.data(), Buf.size());
  for (size_t Cut : {size_t(0), size_t(1), size_t(63), size_t(64), size_t(1000), size_t(2999), size_t(3000)}) {
    INFO("cut at " << Cut);
    CHECK(crc32Update(crc32(Buf.data(), Cut), Buf.data() + Cut, Buf.size() - Cut) == Whole);
  }
}

TEST_CASE("files::writeWithCrc writes every byte, at an offset or appended, and returns their CRC") {
  std::mt19937_64 Rng(13);
  std::vector<uint8_t> Buf((size_t(3) << 20) + 5); // several of its pieces and a tail
  for (auto &B : Buf)
    B = static_cast<uint8_t>(Rng());
  char Name[] = "/tmp/bridge-crc-XXXXXX";
  int Fd = ::mkstemp(Name);
  REQUIRE(Fd >= 0);
  CHECK(files::writeWithCrc(Fd, -1, Buf.data(), 7, Name) == crc32(Buf.data(), 7));
  CHECK(files::writeWithCrc(Fd, 7, Buf.data() + 7, Buf.size() - 7, Name) == crc32(Buf.data() + 7, Buf.size() - 7));
  std::vector<uint8_t> Back(Buf.size() + 1);
  CHECK(::pread(Fd, Back.data(), Back.size(), 0) == static_cast<ssize_t>(Buf.size()));
  Back.pop_back();
  CHECK(Back == Buf);
  ::close(Fd);
  ::unlink(Name);
}
