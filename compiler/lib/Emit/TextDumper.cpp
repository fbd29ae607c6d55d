//===- TextDumper.cpp - location-free dump of the model -----------------===//
//
// '--emit=model' output: what a bridge means after imports, fragments,
// overrides and alternatives are resolved. Tests compare it to check that the
// formatter preserves meaning, and reviewers read it.
//
//===----------------------------------------------------------------------===//
#include "bridgec/Emit/Emitters.h"

#include "bridgec/AST/Print.h"

#include "llvm/ADT/StringExtras.h"

using namespace bridgec;

namespace {
const char *styleText(bridge::Style S) {
  switch (S) {
#define BRIDGE_STYLE(Id, Name, Doc)                                                                     \
  case bridge::Style::Id:                                                                               \
    return Name;
#include "bridge/Styles.def"
  }
  return "?";
}

std::string loopsText(const std::vector<model::Loop> &Ls, const model::Schema &S) {
  std::string Out;
  for (auto &L : Ls) {
    Out += "for " + L.Var + " in " +
           (L.RangeIndex >= 0 ? S.Ranges[L.RangeIndex].Name : ast::print(*L.Begin) + " .. " + ast::print(*L.End));
    if (L.Where)
      Out += " where " + ast::print(*L.Where);
    Out += ": ";
  }
  return Out;
}

std::string nodesText(const std::vector<model::OpNode> &Nodes) {
  // Rebuild nested call syntax from postfix.
  std::vector<std::string> Stack;
  for (auto &N : Nodes) {
    if (N.IsSource) {
      Stack.push_back(N.Source.str() + (N.OptionalInput ? "?" : ""));
      continue;
    }
    std::vector<std::string> Args(Stack.end() - N.NumInputs, Stack.end());
    Stack.resize(Stack.size() - N.NumInputs);
    for (auto &[Name, Value] : N.Params)
      Args.push_back(Name + " = " + ast::print(*Value));
    Stack.push_back((N.Kind == bridge::Op::Transform ? "@" : "") + N.Name + "(" + llvm::join(Args, ", ") + ")");
  }
  return Stack.empty() ? "" : Stack.back();
}
std::string alternativesText(const std::vector<std::vector<model::OpNode>> &Alts) {
  std::vector<std::string> Texts;
  for (auto &A : Alts)
    Texts.push_back(nodesText(A));
  return llvm::join(Texts, " | ");
}
} // namespace

void bridgec::dumpModel(const model::MappingSet &Set, llvm::raw_ostream &OS) {
  const model::Schema &S = *Set.TheSchema;
  for (const model::Bridge &B : Set.Bridges) {
    OS << "bridge " << B.Name << "\n";
    for (auto &M : B.ModelTypes)
      OS << "  match model_type " << ast::quote(M) << "\n";
    for (auto &M : B.Architectures)
      OS << "  match architecture " << ast::quote(M) << "\n";
    for (auto &[Primary, Alt] : B.Aliases)
      OS << "  alias hf" << (Primary.empty() ? "" : ".") << Primary << " = hf." << Alt << "\n";
    for (auto &Rq : B.Requires)
      OS << "  require " << ast::print(*Rq.Cond) << ", " << ast::quote(Rq.Message) << "\n";
    for (auto &C : B.Config) {
      OS << "  config " << S.Fields[C.Field].Name << " = " << ast::print(*C.Value);
      if (C.When)
        OS << " when " << ast::print(*C.When);
      OS << "\n";
    }
    for (auto &E : B.Export) {
      OS << "  export hf." << E.path() << " = " << ast::print(*E.Value);
      if (E.When)
        OS << " when " << ast::print(*E.When);
      OS << (E.Derived ? "  (reversed)" : "") << "\n";
    }
    for (auto &T : B.Tensors) {
      const model::Param &P = S.Params[T.Params[0]];
      OS << "  tensor " << loopsText(T.Loops, S) << (T.Optional ? "optional " : "") << T.Target.str() << " <- "
         << alternativesText(T.Alternatives) << " : " << styleText(P.ParallelStyle) << (P.Expert ? " expert" : "")
         << " [schema " << P.Key << (T.Params.size() > 1 ? " x" + std::to_string(T.Params.size()) : "") << "]";
      if (T.When)
        OS << " when " << ast::print(*T.When);
      OS << "\n";
    }
    for (auto &I : B.Ignores) {
      OS << "  ignore " << loopsText(I.Loops, S) << I.Pat.str();
      if (I.When)
        OS << " when " << ast::print(*I.When);
      OS << "\n";
    }
    for (auto &T : B.Ties) {
      OS << "  tie " << loopsText(T.Loops, S) << T.Copy.str() << " = " << T.Of.str();
      if (T.When)
        OS << " when " << ast::print(*T.When);
      OS << "\n";
    }
  }
}
