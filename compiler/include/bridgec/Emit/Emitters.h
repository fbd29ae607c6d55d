//===- Emitters.h - outputs of bridgec ----------------------------*- C++ -*-===//
//
// Emitters only read the checked model (or, for the formatter, the AST); an
// emitter that can fail would mean a missing Sema check.
//
//===----------------------------------------------------------------------===//
#ifndef BRIDGEC_EMIT_EMITTERS_H
#define BRIDGEC_EMIT_EMITTERS_H

#include "bridgec/AST/AST.h"
#include "bridgec/Sema/Model.h"
#include "bridgec/Sema/Recipes.h"

#include "llvm/Support/SourceMgr.h"
#include "llvm/Support/raw_ostream.h"

#include <cstdint>

namespace bridgec {

/// FNV-1a of the schema text: tables compiled against different schemas must
/// not be linked together.
uint64_t schemaFingerprint(llvm::StringRef SchemaText);

/// The .inc of one mapping file: BRIDGE_GET_TABLES and
/// BRIDGE_GET_REGISTRY_ENTRY sections of constexpr data.
void emitMappingTables(const model::MappingSet &Set, const llvm::SourceMgr &SM, uint64_t SchemaHash,
                       llvm::raw_ostream &OS);
/// The .inc of the schema (BRIDGE_GET_SCHEMA section).
void emitSchemaTable(const model::Schema &S, const llvm::SourceMgr &SM, uint64_t SchemaHash,
                     llvm::raw_ostream &OS);
/// A location-free text dump of the model, for tests and review.
void dumpModel(const model::MappingSet &Set, llvm::raw_ostream &OS);
/// The canonical form of a file; comments are kept, in order.
/// The C++ table of checked recipes (runtime/include/bridge/Recipe.h).
void emitRecipeTable(const std::vector<recipe::Recipe> &Recipes, const llvm::SourceMgr &SM, llvm::raw_ostream &OS);
void formatFile(const ast::File &F, const llvm::SourceMgr &SM, llvm::raw_ostream &OS);

} // namespace bridgec

#endif
