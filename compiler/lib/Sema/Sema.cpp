//===- Sema.cpp - the stages of checking, in order ------------------------===//
//
// Stages, in order: load the schema and the main file with its imports
// (SemaLoad.cpp), build the schema model (SemaSchema.cpp), resolve every
// bridge and fragment declaration once (SemaDecl.cpp, SemaWeights.cpp,
// SemaOps.cpp), then assemble each bridge of the main file from its fragments
// and check what only the whole bridge shows (SemaBridge.cpp).
//
//===----------------------------------------------------------------------===//
#include "bridgec/Sema/Sema.h"

#include "SemaImpl.h"

using namespace bridgec;
using namespace bridgec::sema;
using llvm::SMRange;

std::unique_ptr<model::MappingSet> Compilation::analyze() {
  TheSchema = std::make_unique<model::Schema>();
  Analyzer A(Diags, *TheSchema);
  if (!SchemaFile || SchemaFile->Schemas.size() != 1) {
    Diags.emit(DiagId::SchemaError, SMRange(), "file", "it must declare exactly one 'schema'");
    return nullptr;
  }
  A.buildSchema(SchemaFile->Schemas[0]);
  if (!Main)
    return nullptr;

  // Every declaration in every loaded file, resolved once.
  ResolvedDecls Decls;
  for (auto &F : Files) {
    if (F.get() == SchemaFile)
      continue;
    for (auto &S : F->Schemas)
      Diags.emit(DiagId::SchemaError, S.Range, "'" + S.Name + "'",
                 "only the schema file may declare a 'schema'; move it there or delete it");
    for (auto &B : F->Bridges) {
      auto [It, New] = Decls.ByName.emplace(B.Name, &B);
      if (!New) {
        Diags.emit(DiagId::DuplicateDecl, B.NameRange, B.Name);
        Diags.note(DiagId::NotePreviousHere, It->second->NameRange);
        continue;
      }
      Decls.ByDecl[&B] = A.resolve(B);
    }
  }

  auto Set = std::make_unique<model::MappingSet>();
  Set->TheSchema = TheSchema.get();
  std::map<std::string, std::string> MatchedBy;
  for (const ast::BridgeDecl &B : Main->Bridges) {
    if (B.IsFragment || Decls.ByName[B.Name] != &B)
      continue;
    Set->Bridges.push_back(assembleBridge(B, Main->Path, Decls, *TheSchema, MatchedBy, Diags));
  }
  if (Diags.hasErrors())
    return nullptr;
  return Set;
}
