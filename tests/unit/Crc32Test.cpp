// CRC-32 as zip writes it: the carry-less multiply path against the check
// value of the standard and against the table path at every length and
// alignment around its 64- and 16-byte steps.
#include "bridge/Pickle.h"

#include <doctest/doctest.h>

#include <cstring>
#include <random>
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
