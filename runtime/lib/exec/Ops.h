//===- Ops.h - the tensor ops of weight rules, on libtorch -------*- C++ -*-===//
//
// Forward (import) and inverse (export) of every op in bridge/Ops.def and
// every transform in bridge/Transforms.def. The tensors live on the device
// the executor chose; every op is a permutation or a documented arithmetic,
// so an op followed by its inverse returns the input bit for bit (tested in
// tests/unit/OpsTest.cpp). Private to runtime/lib/exec.
//
//===----------------------------------------------------------------------===//
#ifndef BRIDGE_LIB_EXEC_OPS_H
#define BRIDGE_LIB_EXEC_OPS_H

#include "bridge/Config.h"
#include "bridge/DType.h"
#include "bridge/Table.h"

#include <ATen/core/Tensor.h>

#include <map>
#include <string>
#include <vector>

namespace bridge::exec {

/// The Megatron config fields ops read (heads, groups, head size), by name.
class OpConfig {
public:
  OpConfig(const SchemaTable &S, const std::vector<Json> &Fields) : S(S), Fields(Fields) {}
  int64_t intField(const char *Name, const std::string &Where) const;

private:
  const SchemaTable &S;
  const std::vector<Json> &Fields;
};

/// Evaluated op parameters ('index', 'delta', 'dims', 'dtype', 'block').
using OpParams = std::map<std::string, Json>;

at::Tensor forward(Op Kind, Transform Custom, const std::vector<at::Tensor> &Inputs, const OpParams &Params,
                   const OpConfig &Cfg, const std::string &Where);

/// Undoes forward: returns NumInputs tensors. \p InputTypes gives the dtype
/// each input had on import where the op changed it (cast), else unused.
std::vector<at::Tensor> inverse(Op Kind, Transform Custom, const at::Tensor &Output, unsigned NumInputs,
                                const OpParams &Params, const OpConfig &Cfg, const std::vector<DType> &InputTypes,
                                const std::string &Where);

/// "[2, 3]": a shape in messages.
std::string shapeText(at::IntArrayRef Shape);

/// Where the 'rows' op's block lies: in each of Groups row groups of Period
/// rows (1 group: the whole tensor), rows [Offset, Offset + Size).
struct RowBlockSpec {
  int64_t Groups = 1, Period = 0, Offset = 0, Size = 0;
  /// The block's rows in \p Whole, a view ([Groups, Size, ...] when grouped).
  at::Tensor slot(const at::Tensor &Whole) const;
  /// \p Block (the op's result, [Groups * Size, ...]) shaped as slot() is
  /// (unchanged when it has other rows).
  at::Tensor grouped(const at::Tensor &Block) const;
};

/// The 'rows' op's block, from its parameters; with \p X, checked against
/// it: the sizes times the groups must add up to X's rows.
RowBlockSpec rowBlock(const OpParams &Params, const std::string &Where, const at::Tensor *X = nullptr);

/// Whether op \p Kind computes (dequantizes) rather than only moves bytes.
/// Only such ops run on a CUDA device: moving bytes is faster where the
/// bytes already are, in host memory (measured: bench/results).
bool opComputes(Op Kind);

at::ScalarType toScalarType(DType T);
DType fromScalarType(at::ScalarType T);

} // namespace bridge::exec

#endif
