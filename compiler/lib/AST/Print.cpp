//===- Print.cpp - canonical text of AST pieces -----------------------------===//
#include "bridgec/AST/Print.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>

using namespace bridgec::ast;

namespace {
// Binding strength, loosest first; mirrors grammar/BridgeParser.g4.
enum Prec { PTernary = 1, PCoalesce, POr, PAnd, PCmp, PAdd, PMul, PUnary, PPrimary };

int binaryPrec(const std::string &Op) {
  if (Op == "||")
    return POr;
  if (Op == "&&")
    return PAnd;
  if (Op == "+" || Op == "-")
    return PAdd;
  if (Op == "*" || Op == "/" || Op == "//" || Op == "%")
    return PMul;
  return PCmp;
}

int precOf(const Expr &E) {
  switch (E.K) {
  case Expr::Ternary:
    return PTernary;
  case Expr::Coalesce:
    return PCoalesce;
  case Expr::Binary:
    return binaryPrec(E.Text);
  case Expr::Unary:
    return PUnary;
  default:
    return PPrimary;
  }
}

std::string floatText(double V) {
  // Shortest text that reads back to the same double.
  char Buf[64];
  if (V == std::floor(V) && std::fabs(V) < 1e15) {
    std::snprintf(Buf, sizeof Buf, "%.1f", V);
    return Buf;
  }
  for (int Digits = 1; Digits <= 17; ++Digits) {
    std::snprintf(Buf, sizeof Buf, "%.*g", Digits, V);
    if (std::strtod(Buf, nullptr) == V)
      break;
  }
  std::string S = Buf;
  if (S.find_first_of(".eEn") == std::string::npos) // keep it a float literal
    S += ".0";
  return S;
}

struct Printer {
  const std::map<std::string, std::string> *Rename;
  bool AsWritten; ///< a let's use prints as its name, not as its expression

  std::string name(const std::string &N) const {
    if (Rename) {
      auto It = Rename->find(N);
      if (It != Rename->end())
        return It->second;
    }
    return N;
  }

  std::string sub(const Expr &E, int MinPrec) {
    std::string S = expr(E);
    int P = AsWritten && !E.LetUse.empty() ? PPrimary : precOf(E);
    return P < MinPrec ? "(" + S + ")" : S;
  }

  std::string expr(const Expr &E) {
    if (AsWritten && !E.LetUse.empty())
      return E.LetUse;
    switch (E.K) {
    case Expr::Int:
      return std::to_string(E.IntVal);
    case Expr::Float:
      // The source spelling reads back to the same value; keep it.
      return E.Text.empty() ? floatText(E.FloatVal) : E.Text;
    case Expr::String:
      return quote(E.Text);
    case Expr::Bool:
      return E.BoolVal ? "true" : "false";
    case Expr::Null:
      return "null";
    case Expr::HFPath: {
      std::string S = "hf";
      for (auto &P : E.Path)
        S += "." + P;
      return S;
    }
    case Expr::Name:
      return name(E.Text);
    case Expr::Call:
    case Expr::List: {
      std::string S = E.K == Expr::Call ? E.Text + "(" : "[";
      for (size_t I = 0; I < E.Ops.size(); ++I)
        S += (I ? ", " : "") + expr(*E.Ops[I]);
      return S + (E.K == Expr::Call ? ")" : "]");
    }
    case Expr::Unary:
      return E.Text + sub(*E.Ops[0], PUnary);
    case Expr::Binary: {
      int P = binaryPrec(E.Text);
      // Left-associative: the right operand needs parens at equal strength.
      // Comparisons do not chain, so both sides need them.
      int LeftMin = P == PCmp ? P + 1 : P;
      return sub(*E.Ops[0], LeftMin) + " " + E.Text + " " + sub(*E.Ops[1], P + 1);
    }
    case Expr::Coalesce: {
      std::string S;
      for (size_t I = 0; I < E.Ops.size(); ++I)
        S += (I ? " ?? " : "") + sub(*E.Ops[I], POr);
      return S;
    }
    case Expr::Ternary:
      return sub(*E.Ops[0], PCoalesce) + " ? " + sub(*E.Ops[1], PTernary) + " : " + sub(*E.Ops[2], PTernary);
    }
    return "?";
  }
};
} // namespace

std::string bridgec::ast::quote(const std::string &S) {
  std::string Out = "\"";
  for (char C : S) {
    if (C == '"' || C == '\\')
      Out += '\\';
    if (C == '\n') {
      Out += "\\n";
      continue;
    }
    if (C == '\t') {
      Out += "\\t";
      continue;
    }
    Out += C;
  }
  return Out + "\"";
}

std::string bridgec::ast::print(const Expr &E, const std::map<std::string, std::string> *Rename, bool AsWritten) {
  return Printer{Rename, AsWritten}.expr(E);
}

std::string bridgec::ast::print(const Pattern &P, const std::map<std::string, std::string> *Rename,
                                bool AsWritten) {
  std::string S;
  for (auto &Pc : P.Pieces) {
    switch (Pc.K) {
    case PatternPiece::Literal:
      S += Pc.Text;
      break;
    case PatternPiece::Capture:
      S += "{" + print(*Pc.E, Rename, AsWritten) + "}";
      break;
    case PatternPiece::Alternatives: {
      S += "{";
      for (size_t I = 0; I < Pc.Alts.size(); ++I)
        S += (I ? "," : "") + Pc.Alts[I];
      S += "}";
      break;
    }
    }
  }
  return S;
}
