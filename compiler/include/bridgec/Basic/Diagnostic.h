//===- Diagnostic.h - diagnostics over llvm::SourceMgr -----------*- C++ -*-===//
//
// One DiagnosticEngine per compilation. Every diagnostic has a location and a
// stable code; it renders as 'file:line:col: error: message [BRnnnn]' followed
// by the source line and a caret (llvm::SourceMgr::PrintMessage).
//
//===----------------------------------------------------------------------===//
#ifndef BRIDGEC_BASIC_DIAGNOSTIC_H
#define BRIDGEC_BASIC_DIAGNOSTIC_H

#include "llvm/ADT/StringRef.h"
#include "llvm/Support/FormatVariadic.h"
#include "llvm/Support/SMLoc.h"
#include "llvm/Support/SourceMgr.h"
#include "llvm/Support/raw_ostream.h"

#include <set>
#include <string>
#include <tuple>

namespace bridgec {

enum class DiagId : unsigned {
#define BRIDGE_DIAG(Id, Code, Severity, Format) Id,
#include "bridgec/Basic/DiagnosticKinds.def"
};

enum class Severity { Error, Warning, Note };

struct DiagInfo {
  const char *Name;
  unsigned Code;
  Severity Sev;
  const char *Format;
};

/// The registry row of a diagnostic kind.
const DiagInfo &getDiagInfo(DiagId Id);
/// All registered kinds, in .def order (used by --list-diagnostics).
llvm::ArrayRef<DiagInfo> allDiagInfos();

class DiagnosticEngine {
public:
  DiagnosticEngine(llvm::SourceMgr &SM, llvm::raw_ostream &OS, unsigned ErrorLimit = 50)
      : SM(SM), OS(OS), ErrorLimit(ErrorLimit) {}

  /// Report \p Id at \p Range with already formatted \p Message.
  void report(DiagId Id, llvm::SMRange Range, const std::string &Message);

  template <typename... Ts>
  void emit(DiagId Id, llvm::SMRange Range, Ts &&...Args) {
    report(Id, Range,
           llvm::formatv(getDiagInfo(Id).Format, std::forward<Ts>(Args)...).str());
  }
  void note(DiagId Id, llvm::SMRange Range) { emit(Id, Range); }

  unsigned errorCount() const { return NumErrors; }
  bool hasErrors() const { return NumErrors != 0; }
  bool limitReached() const { return Stopped; }
  llvm::SourceMgr &getSourceMgr() { return SM; }

private:
  llvm::SourceMgr &SM;
  llvm::raw_ostream &OS;
  unsigned ErrorLimit;
  unsigned NumErrors = 0;
  bool Stopped = false;
  bool LastSuppressed = false; // notes follow their error's fate
  /// Errors and warnings already shown: a guarded group's condition is
  /// checked once per rule inside it, and reports its mistake once.
  std::set<std::tuple<unsigned, const char *, std::string>> Shown;
};

/// "; did you mean 'x'?" for the closest candidate within a small edit
/// distance, or "" when nothing is close.
std::string didYouMean(llvm::StringRef Name, llvm::ArrayRef<std::string> Candidates);

} // namespace bridgec

#endif
