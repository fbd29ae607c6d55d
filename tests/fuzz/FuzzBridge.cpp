//===- FuzzBridge.cpp - the .bridge parser and semantic checks ----------===//
//
// Input: the text of a .bridge file, checked against the shipped schema
// with mappings/common importable, as bridgec does; its recipes and presets
// are checked too, against the shipped models (recipes/models).
//
//===----------------------------------------------------------------------===//
#include "FuzzUtil.h"

#include "bridgec/Basic/Diagnostic.h"
#include "bridgec/Parse/Parser.h"
#include "bridgec/Sema/Recipes.h"
#include "bridgec/Sema/Sema.h"

#include "llvm/Support/SourceMgr.h"
#include "llvm/Support/raw_ostream.h"

#include "SchemaText.inc"

#include <cstdint>

#ifndef BRIDGE_COMMON_DIR
#error "BRIDGE_COMMON_DIR: the mappings/common directory"
#endif
#ifndef BRIDGE_MODELS_DIR
#error "BRIDGE_MODELS_DIR: the recipes/models directory"
#endif

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *Data, size_t Size) {
  std::string Path = fuzz::scratchDir() + "/input.bridge";
  fuzz::writeBytes(Path, Data, Size);
  llvm::SourceMgr SM;
  std::string Diags;
  llvm::raw_string_ostream OS(Diags);
  bridgec::DiagnosticEngine D(SM, OS);
  bridgec::Compilation C(D, {BRIDGE_COMMON_DIR});
  C.loadSchema("megatron.bridge", kEmbeddedSchema);
  if (C.loadMain(Path)) {
    (void)C.analyze();
    (void)bridgec::recipe::checkRecipes(C.files(), BRIDGE_MODELS_DIR, D);
  }
  return 0;
}
