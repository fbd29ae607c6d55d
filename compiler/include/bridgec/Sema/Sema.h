//===- Sema.h - checks and the semantic model --------------------*- C++ -*-===//
#ifndef BRIDGEC_SEMA_SEMA_H
#define BRIDGEC_SEMA_SEMA_H

#include "bridgec/AST/AST.h"
#include "bridgec/Basic/Diagnostic.h"
#include "bridgec/Sema/Model.h"

#include <memory>
#include <string>
#include <vector>

namespace bridgec {

/// Everything one compilation loaded: the schema, the main file and the files
/// it imports, with the SourceMgr that owns their text.
class Compilation {
public:
  Compilation(DiagnosticEngine &Diags, std::vector<std::string> ImportDirs)
      : Diags(Diags), ImportDirs(std::move(ImportDirs)) {}

  /// Load the schema from text (embedded in bridgec, or a file).
  bool loadSchema(llvm::StringRef DisplayName, llvm::StringRef Text);
  /// Load \p Path and, transitively, its imports. Returns false on I/O errors.
  bool loadMain(const std::string &Path);
  /// Check everything and build the model of the main file's bridges.
  /// Returns null when any error was reported.
  std::unique_ptr<model::MappingSet> analyze();

  /// Every file read (for the depfile), main file first.
  const std::vector<std::string> &inputFiles() const { return Inputs; }
  const ast::File *mainFile() const { return Main; }
  /// The main file and every file it imports (not the schema).
  std::vector<const ast::File *> files() const {
    std::vector<const ast::File *> Out;
    for (auto &F : Files)
      if (F.get() != SchemaFile)
        Out.push_back(F.get());
    return Out;
  }
  const model::Schema &schema() const { return *TheSchema; }

private:
  const ast::File *load(const std::string &Path, llvm::SMRange ImportLoc, std::vector<std::string> &Stack);

  DiagnosticEngine &Diags;
  std::vector<std::string> ImportDirs;
  std::vector<std::unique_ptr<ast::File>> Files;
  std::map<std::string, const ast::File *> ByPath;
  std::vector<std::string> Inputs;
  const ast::File *Main = nullptr;
  const ast::File *SchemaFile = nullptr;
  std::unique_ptr<model::Schema> TheSchema;
};

} // namespace bridgec

#endif
