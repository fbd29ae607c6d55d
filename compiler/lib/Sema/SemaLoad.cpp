//===- SemaLoad.cpp - the main file and its imports -------------------------===//
//
// Imports are found next to the importing file, then in each -I directory;
// each file is parsed once however often it is imported, and a file that
// imports itself, directly or not, is an import cycle.
//
//===----------------------------------------------------------------------===//
#include "bridgec/Sema/Sema.h"

#include "bridgec/Parse/Parser.h"

#include "llvm/ADT/StringExtras.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/Path.h"

using namespace bridgec;
using llvm::SMRange;

bool Compilation::loadSchema(llvm::StringRef DisplayName, llvm::StringRef Text) {
  auto Buf = llvm::MemoryBuffer::getMemBufferCopy(Text, DisplayName);
  unsigned ID = Diags.getSourceMgr().AddNewSourceBuffer(std::move(Buf), llvm::SMLoc());
  Files.push_back(parseBuffer(ID, Diags));
  SchemaFile = Files.back().get();
  return true;
}

bool Compilation::loadMain(const std::string &Path) {
  std::vector<std::string> Stack;
  Main = load(Path, SMRange(), Stack);
  return Main != nullptr;
}

const ast::File *Compilation::load(const std::string &Path, SMRange ImportLoc, std::vector<std::string> &Stack) {
  llvm::SmallString<256> Canon(Path);
  llvm::sys::fs::make_absolute(Canon);
  llvm::sys::path::remove_dots(Canon, /*remove_dot_dot=*/true);
  std::string Key = Canon.str().str();
  for (size_t I = 0; I < Stack.size(); ++I)
    if (Stack[I] == Key) {
      std::string Chain;
      for (size_t J = I; J < Stack.size(); ++J)
        Chain += llvm::sys::path::filename(Stack[J]).str() + " -> ";
      Chain += llvm::sys::path::filename(Key).str();
      Diags.emit(DiagId::ImportCycle, ImportLoc, Chain);
      return nullptr;
    }
  if (auto It = ByPath.find(Key); It != ByPath.end())
    return It->second;
  auto BufOr = llvm::MemoryBuffer::getFile(Path);
  if (!BufOr) {
    Diags.emit(DiagId::CannotOpenFile, ImportLoc, Path, BufOr.getError().message());
    return nullptr;
  }
  unsigned ID = Diags.getSourceMgr().AddNewSourceBuffer(std::move(*BufOr), ImportLoc.Start);
  Files.push_back(parseBuffer(ID, Diags));
  const ast::File *F = Files.back().get();
  ByPath[Key] = F;
  Inputs.push_back(Path);
  Stack.push_back(Key);
  for (const ast::ImportDecl &Imp : F->Imports) {
    // Relative to the importing file, then each -I directory.
    std::vector<std::string> Candidates;
    llvm::SmallString<256> Local(llvm::sys::path::parent_path(Path));
    llvm::sys::path::append(Local, Imp.Path);
    Candidates.push_back(Local.str().str());
    for (const std::string &Dir : ImportDirs) {
      llvm::SmallString<256> C(Dir);
      llvm::sys::path::append(C, Imp.Path);
      Candidates.push_back(C.str().str());
    }
    std::string Found;
    for (const std::string &C : Candidates)
      if (llvm::sys::fs::exists(C)) {
        Found = C;
        break;
      }
    if (Found.empty()) {
      Diags.emit(DiagId::ImportNotFound, Imp.Range, Imp.Path, llvm::join(Candidates, ", "));
      continue;
    }
    load(Found, Imp.Range, Stack);
  }
  Stack.pop_back();
  return F;
}
