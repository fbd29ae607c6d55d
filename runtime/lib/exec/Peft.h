//===- Peft.h - LoRA adapters: HF PEFT directories in and out ------*- C++ -*-===//
//
// Import reads an HF PEFT LoRA adapter beside its base checkpoint into
// Megatron-Bridge's LoRA layout (docs/lora.md); export writes a checkpoint's
// adapters as an HF PEFT directory or merges them into the weights. The
// adapters' tensors are planned beside their weights (addAdapters in
// bridge/Plan.h) and go through the one pipeline like any tensor.
// Private to runtime/lib/exec.
//
//===----------------------------------------------------------------------===//
#ifndef BRIDGE_LIB_EXEC_PEFT_H
#define BRIDGE_LIB_EXEC_PEFT_H

#include "Pipeline.h"

namespace bridge {

/// The PEFT directory \p AdapterDir against the HF base \p Ckpt (in \p
/// BaseDir) and \p C's plan: every adapter tensor checked (LoRA only, a
/// module the base has, shapes of its rank) before anything is written;
/// the adapters added to C.P; the matrices the plan reads added to \p Ckpt;
/// C.Adapter set to what bridge.json records.
void planPeftImport(const std::string &AdapterDir, const std::string &BaseDir, Conversion &C,
                    SafetensorsCheckpoint &Ckpt);

/// The adapters a checkpoint's bridge.json records (its "adapter" object),
/// \p SidePath naming it in messages.
AdapterSpec adapterSpecOf(const Json &Adapter, const std::string &SidePath);

/// What bridge.json would record of the adapters of the Megatron-Bridge
/// LoRA checkpoint in iteration directory \p Iter: dim from its keys'
/// shapes, the modules from their names, alpha from the run_config.yaml
/// beside it (its 'peft:' section, a LoRA's).
Json peftRunAdapter(const std::string &Iter);

/// An HF PEFT directory (adapter_config.json, adapter_model.safetensors)
/// from \p C's adapter tensors (C.P holds only them), in dtype \p Type;
/// \p Side is the checkpoint's bridge.json.
std::unique_ptr<Sink> peftSink(const Conversion &C, const Json &Side, std::string SidePath, DType Type);

/// \p Inner's weights with their adapters merged in, W + (alpha / dim) B A
/// computed in fp32 on \p Device and given back in W's dtype; \p Adapters
/// holds the adapter tensors (their AdapterOf index \p Inner's plan).
/// \p AdapterSource, when given, holds the adapters (a LoRA run's
/// checkpoint beside its base).
std::unique_ptr<Source> mergingSource(std::unique_ptr<Source> Inner, std::unique_ptr<Conversion> Adapters,
                                      const Conversion &Weights, std::string Device,
                                      std::unique_ptr<Source> AdapterSource = nullptr);

} // namespace bridge

#endif
