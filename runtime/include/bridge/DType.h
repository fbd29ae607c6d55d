//===- DType.h - element types of checkpoint tensors --------------*- C++ -*-===//
//
// The element types that safetensors, torch pickles and the executor agree
// on, with each format's spelling. X-macro list:
//   BRIDGE_DTYPE(Id, bytes, "safetensors", "torch attribute", "legacy storage")
//
//===----------------------------------------------------------------------===//
#ifndef BRIDGE_DTYPE_H
#define BRIDGE_DTYPE_H

#include <cstdint>
#include <optional>
#include <string_view>

namespace bridge {

#define BRIDGE_DTYPES(X)                                                                                \
  X(F64, 8, "F64", "float64", "DoubleStorage")                                                        \
  X(F32, 4, "F32", "float32", "FloatStorage")                                                         \
  X(F16, 2, "F16", "float16", "HalfStorage")                                                          \
  X(BF16, 2, "BF16", "bfloat16", "BFloat16Storage")                                                   \
  X(F8_E4M3, 1, "F8_E4M3", "float8_e4m3fn", "Float8_e4m3fnStorage")                                   \
  X(F8_E5M2, 1, "F8_E5M2", "float8_e5m2", "Float8_e5m2Storage")                                       \
  X(I64, 8, "I64", "int64", "LongStorage")                                                            \
  X(I32, 4, "I32", "int32", "IntStorage")                                                             \
  X(I16, 2, "I16", "int16", "ShortStorage")                                                           \
  X(I8, 1, "I8", "int8", "CharStorage")                                                               \
  X(U8, 1, "U8", "uint8", "ByteStorage")                                                              \
  X(Bool, 1, "BOOL", "bool", "BoolStorage")

enum class DType : uint8_t {
#define BRIDGE_DTYPE_ENUM(Id, Bytes, ST, Torch, Storage) Id,
  BRIDGE_DTYPES(BRIDGE_DTYPE_ENUM)
#undef BRIDGE_DTYPE_ENUM
};

size_t dtypeSize(DType T);
std::string_view safetensorsName(DType T);
std::string_view torchName(DType T);
std::string_view storageName(DType T);
std::optional<DType> dtypeFromSafetensors(std::string_view Name);
std::optional<DType> dtypeFromTorch(std::string_view Name);
std::optional<DType> dtypeFromStorage(std::string_view Name);

} // namespace bridge

#endif
