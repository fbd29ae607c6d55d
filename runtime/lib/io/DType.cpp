//===- DType.cpp - element type names -------------------------------------===//
#include "bridge/DType.h"

namespace bridge {
namespace {
struct Info {
  DType Id;
  size_t Bytes;
  std::string_view ST, Torch, Storage;
};
constexpr Info Infos[] = {
#define BRIDGE_DTYPE_INFO(Id, Bytes, ST, Torch, Storage) {DType::Id, Bytes, ST, Torch, Storage},
    BRIDGE_DTYPES(BRIDGE_DTYPE_INFO)
#undef BRIDGE_DTYPE_INFO
};
const Info &info(DType T) { return Infos[static_cast<size_t>(T)]; }
} // namespace

size_t dtypeSize(DType T) { return info(T).Bytes; }
std::string_view safetensorsName(DType T) { return info(T).ST; }
std::string_view torchName(DType T) { return info(T).Torch; }
std::string_view storageName(DType T) { return info(T).Storage; }

std::optional<DType> dtypeFromSafetensors(std::string_view N) {
  for (const Info &I : Infos)
    if (I.ST == N)
      return I.Id;
  return std::nullopt;
}
std::optional<DType> dtypeFromTorch(std::string_view N) {
  for (const Info &I : Infos)
    if (I.Torch == N)
      return I.Id;
  return std::nullopt;
}
std::optional<DType> dtypeFromStorage(std::string_view N) {
  for (const Info &I : Infos)
    if (I.Storage == N)
      return I.Id;
  return std::nullopt;
}
} // namespace bridge
