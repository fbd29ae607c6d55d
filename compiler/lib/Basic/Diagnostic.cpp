//===- Diagnostic.cpp - diagnostics over llvm::SourceMgr ----------------===//
#include "bridgec/Basic/Diagnostic.h"

#include <algorithm>

using namespace bridgec;

static const DiagInfo Infos[] = {
#define BRIDGE_DIAG(Id, Code, Sev, Format) {#Id, Code, Severity::Sev, Format},
#include "bridgec/Basic/DiagnosticKinds.def"
};

const DiagInfo &bridgec::getDiagInfo(DiagId Id) {
  return Infos[static_cast<unsigned>(Id)];
}

llvm::ArrayRef<DiagInfo> bridgec::allDiagInfos() { return Infos; }

void DiagnosticEngine::report(DiagId Id, llvm::SMRange Range, const std::string &Message) {
  const DiagInfo &Info = getDiagInfo(Id);
  if (Info.Sev == Severity::Note) {
    if (LastSuppressed || Stopped)
      return;
  } else {
    LastSuppressed = Stopped || !Shown.emplace(Info.Code, Range.Start.getPointer(), Message).second;
    if (LastSuppressed)
      return;
    if (Info.Sev == Severity::Error && NumErrors >= ErrorLimit) {
      Stopped = true;
      LastSuppressed = true;
      OS << "bridgec: error: too many errors emitted, stopping now [BR0103]\n";
      return;
    }
  }
  llvm::SourceMgr::DiagKind Kind = Info.Sev == Severity::Error     ? llvm::SourceMgr::DK_Error
                                   : Info.Sev == Severity::Warning ? llvm::SourceMgr::DK_Warning
                                                                   : llvm::SourceMgr::DK_Note;
  std::string Text = Message;
  if (Info.Sev != Severity::Note)
    Text += llvm::formatv(" [BR{0:d4}]", Info.Code).str();
  if (Info.Sev == Severity::Error)
    ++NumErrors;
  if (!Range.Start.isValid()) {
    OS << (Kind == llvm::SourceMgr::DK_Error ? "bridgec: error: " : "bridgec: note: ") << Text << "\n";
    return;
  }
  llvm::ArrayRef<llvm::SMRange> Ranges;
  if (Range.End.isValid() && Range.End.getPointer() > Range.Start.getPointer())
    Ranges = Range;
  SM.PrintMessage(OS, Range.Start, Kind, Text, Ranges);
}

std::string bridgec::didYouMean(llvm::StringRef Name, llvm::ArrayRef<std::string> Candidates) {
  const std::string *Best = nullptr;
  unsigned BestDist = ~0u;
  for (const std::string &C : Candidates) {
    unsigned D = Name.edit_distance(C, /*AllowReplacements=*/true, BestDist);
    if (D < BestDist) {
      BestDist = D;
      Best = &C;
    }
  }
  // Close means a few typos relative to the name's length.
  unsigned Allowed = std::max<unsigned>(2, Name.size() / 4);
  if (!Best || BestDist > Allowed)
    return "";
  return "; did you mean '" + *Best + "'?";
}
