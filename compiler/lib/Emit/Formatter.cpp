//===- Formatter.cpp - canonical form of a .bridge file ------------------===//
//
// '--format': one item per line, two-space indentation, sections in a fixed
// order (match, config, export, weights; each 'let' before the section that
// followed it), the fewest parentheses, a 'let' used by its name, and every
// comment kept, placed before the item that followed it. The output parses
// to the same model (tested in tests/compiler/format).
//
//===----------------------------------------------------------------------===//
#include "bridgec/Emit/Emitters.h"

#include "bridgec/AST/Print.h"

#include "llvm/ADT/StringExtras.h"

#include <algorithm>
#include <cctype>
#include <functional>

using namespace bridgec;
using namespace bridgec::ast;

namespace {
class Formatter {
public:
  Formatter(const File &F, llvm::raw_ostream &OS) : F(F), OS(OS) {}

  void run() {
    for (auto &I : F.Imports) {
      comments(I.Range.Start, 0);
      OS << "import " << quote(I.Path) << ";\n";
      ended(I.Range.End);
    }
    // Top-level declarations in source order.
    std::vector<std::pair<const char *, std::function<void()>>> Decls;
    for (auto &B : F.Bridges)
      Decls.push_back({B.Range.Start.getPointer(), [&] { bridgeDecl(B); }});
    for (auto &S : F.Schemas)
      Decls.push_back({S.Range.Start.getPointer(), [&] { schemaDecl(S); }});
    for (auto &R : F.Recipes)
      Decls.push_back({R.Range.Start.getPointer(), [&] { recipeDecl(R); }});
    std::stable_sort(Decls.begin(), Decls.end(), [](auto &A, auto &B) { return A.first < B.first; });
    for (auto &[At, Print] : Decls)
      Print();
    comments(llvm::SMLoc(), 0); // the rest
  }

private:
  const File &F;
  llvm::raw_ostream &OS;
  size_t NextComment = 0;
  const char *LastEnd = nullptr; ///< end of the last item or comment printed

  void indent(unsigned N) { OS.indent(2 * N); }

  // A use of a 'let' is printed as written: the name, not its expression.
  static std::string print(const Expr &E) { return ast::print(E, nullptr, true); }
  static std::string print(const Pattern &P) { return ast::print(P, nullptr, true); }

  /// Keeps one blank line where the source had at least one before \p Next.
  void gap(const char *Next) {
    if (LastEnd && Next && Next > LastEnd) {
      // An empty line: a newline, then only blanks up to the next newline.
      bool Blank = false;
      for (const char *P = LastEnd; P < Next && !Blank; ++P) {
        if (*P != '\n')
          continue;
        const char *Q = P + 1;
        while (Q < Next && (*Q == ' ' || *Q == '\t' || *Q == '\r'))
          ++Q;
        Blank = Q < Next && *Q == '\n';
      }
      if (Blank)
        OS << "\n";
    }
    LastEnd = Next;
  }
  void ended(llvm::SMLoc End) {
    if (End.isValid())
      LastEnd = End.getPointer();
  }

  /// Prints the comments that come before \p Before (all when invalid), then
  /// the blank line the item had before it.
  void comments(llvm::SMLoc Before, unsigned Depth) {
    while (NextComment < F.Comments.size() &&
           (!Before.isValid() || F.Comments[NextComment].Loc.getPointer() < Before.getPointer())) {
      const Comment &C = F.Comments[NextComment++];
      gap(C.Loc.getPointer());
      indent(Depth);
      OS << C.Text << "\n";
      LastEnd = C.Loc.getPointer() + C.Text.size();
    }
    if (Before.isValid())
      gap(Before.getPointer());
  }

  /// Breaks a long line before \p Tail, which goes on the next line with
  /// two more levels of indentation.
  void line(unsigned Depth, const std::string &Head, const std::string &Sep, const std::string &Tail) {
    indent(Depth);
    if (2 * Depth + Head.size() + Sep.size() + Tail.size() <= 120) {
      OS << Head << Sep << Tail << "\n";
      return;
    }
    OS << Head << (Sep == ", " ? "," : "") << "\n";
    indent(Depth + 2);
    OS << (Sep == ", " ? "" : llvm::StringRef(Sep).ltrim().str()) << Tail << "\n";
  }

  std::string when(const ExprP &W, const char *Kw = " when ") { return W ? Kw + print(*W) : ""; }

  /// The guarded groups open in one section or loop body: the items
  /// printed next sit at depth Depth + Open.size().
  struct Groups {
    const GuardGroup *Base; ///< the group around the section or loop, if any
    unsigned Depth;
    std::vector<const GuardGroup *> Open = {};
  };

  /// Closes and opens groups so that the next item sits in \p G; returns
  /// the item's depth.
  unsigned enter(Groups &S, const GuardGroup *G) {
    std::vector<const GuardGroup *> Chain; // outermost first
    for (const GuardGroup *P = G; P && P != S.Base; P = P->Outer.get())
      Chain.insert(Chain.begin(), P);
    size_t Keep = 0;
    while (Keep < S.Open.size() && Keep < Chain.size() && S.Open[Keep] == Chain[Keep])
      ++Keep;
    while (S.Open.size() > Keep)
      close(S);
    for (size_t I = Keep; I < Chain.size(); ++I) {
      unsigned D = S.Depth + S.Open.size();
      comments(Chain[I]->Range.Start, D);
      indent(D);
      OS << "when " << print(*Chain[I]->Cond) << " {\n";
      S.Open.push_back(Chain[I]);
    }
    return S.Depth + S.Open.size();
  }
  void close(Groups &S) {
    const GuardGroup *G = S.Open.back();
    comments(G->Range.End, S.Depth + S.Open.size());
    S.Open.pop_back();
    indent(S.Depth + S.Open.size());
    OS << "}\n";
    ended(G->Range.End);
  }
  void closeAll(Groups &S) {
    while (!S.Open.empty())
      close(S);
  }

  void recipeDecl(const RecipeDecl &R) {
    comments(R.Range.Start, 0);
    OS << (R.IsPreset ? "preset " : "recipe ") << R.Name;
    for (size_t I = 0; I < R.Bases.size(); ++I)
      OS << (I ? ", " : " : ") << R.Bases[I].Name;
    OS << " {\n";
    for (auto &S : R.Settings) {
      comments(S.Range.Start, 1);
      line(1, S.Key + " =", " ", print(*S.Value) + ";");
      ended(S.Range.End);
    }
    comments(R.Range.End, 1);
    OS << "}\n";
    ended(R.Range.End);
  }

  void bridgeDecl(const BridgeDecl &B) {
    comments(B.Range.Start, 0);
    OS << (B.IsFragment ? "fragment " : "bridge ") << B.Name;
    for (size_t I = 0; I < B.Bases.size(); ++I)
      OS << (I ? ", " : " : ") << B.Bases[I].Name;
    OS << " {\n";
    for (auto &M : B.Matches) {
      comments(M.Range.Start, 1);
      indent(1);
      OS << "match " << M.Key << " " << quote(M.Value) << ";\n";
      ended(M.Range.End);
    }
    for (auto &A : B.Aliases) {
      comments(A.Range.Start, 1);
      indent(1);
      OS << "alias hf";
      for (auto &P : A.Primary)
        OS << "." << P;
      OS << " = hf";
      for (auto &P : A.Alternative)
        OS << "." << P;
      OS << ";\n";
    }
    // Each 'let' stays before the section that followed it (the sections
    // print in a fixed order), the rest at the end.
    size_t NextLet = 0;
    auto Lets = [&](llvm::SMLoc Before) {
      for (; NextLet < B.Lets.size(); ++NextLet) {
        const LetDecl &L = B.Lets[NextLet];
        if (Before.isValid() && L.Range.Start.getPointer() > Before.getPointer())
          return;
        comments(L.Range.Start, 1);
        line(1, "let " + L.Name + " =", " ", print(*L.Value) + ";");
        ended(L.Range.End);
      }
    };
    if (!B.Config.empty() || !B.Requires.empty()) {
      Lets(B.ConfigAt);
      indent(1);
      OS << "config {\n";
      for (auto &Rq : B.Requires) {
        comments(Rq.Range.Start, 2);
        line(2, "require " + print(*Rq.Cond), ", ", quote(Rq.Message) + ";");
        ended(Rq.Range.End);
      }
      Groups S{nullptr, 2};
      for (auto &A : B.Config) {
        unsigned D = enter(S, A.Group.get());
        comments(A.Range.Start, D);
        indent(D);
        OS << (A.Override ? "override " : "") << A.Field << " = " << print(*A.Value) << when(A.OwnWhen) << ";\n";
        ended(A.Range.End);
      }
      closeAll(S);
      indent(1);
      OS << "}\n";
    }
    if (!B.Export.empty()) {
      Lets(B.ExportAt);
      indent(1);
      OS << "export {\n";
      Groups S{nullptr, 2};
      for (auto &A : B.Export) {
        unsigned D = enter(S, A.Group.get());
        comments(A.Range.Start, D);
        indent(D);
        OS << (A.Override ? "override " : "") << "hf";
        for (auto &P : A.Path)
          OS << "." << P;
        OS << " = " << print(*A.Value) << when(A.OwnWhen) << ";\n";
        ended(A.Range.End);
      }
      closeAll(S);
      indent(1);
      OS << "}\n";
    }
    if (!B.Weights.empty() || !B.Quantized.empty()) {
      Lets(B.WeightsAt);
      indent(1);
      OS << "weights {\n";
      for (const QuantizedDecl &Q : B.Quantized) {
        comments(Q.Range.Start, 2);
        std::vector<std::string> Globs;
        for (auto &G : Q.Globs)
          Globs.push_back(quote(G.first));
        line(2, "quantized " + Q.Scheme + "(" + Q.Param + " = " + quote(Q.Suffix) + ") for", " ",
             llvm::join(Globs, ", ") + ";");
        ended(Q.Range.End);
      }
      items(B.Weights, nullptr, 2);
      indent(1);
      OS << "}\n";
    }
    Lets(llvm::SMLoc());
    comments(B.Range.End, 1);
    OS << "}\n";
    ended(B.Range.End);
  }

  std::string source(const Source &S) {
    if (S.K == Source::PatternRef)
      return print(S.Pat) + (S.OptionalInput ? "?" : "");
    std::string Out = (S.Escape ? "@" : "") + S.OpName + "(";
    for (size_t I = 0; I < S.Args.size(); ++I) {
      const OpArg &A = S.Args[I];
      Out += I ? ", " : "";
      Out += A.Src ? source(*A.Src) : A.Param + " = " + print(*A.Value);
    }
    return Out + ")";
  }

  /// The weight items of a section or loop body (inside \p Base), with
  /// their guarded groups.
  void items(const std::vector<WeightItem> &Items, const GuardGroup *Base, unsigned Depth) {
    Groups S{Base, Depth};
    for (auto &It : Items) {
      const GuardGroup *G = It.K == WeightItem::TensorItem ? It.Tensor->Group.get()
                            : It.K == WeightItem::IgnoreItem ? It.Ignore->Group.get()
                            : It.K == WeightItem::TieItem    ? It.Tie->Group.get()
                            : It.K == WeightItem::BlockItem  ? It.Block->Group.get()
                            : It.K == WeightItem::UseItem    ? It.Use->Group.get()
                                                             : It.For->Group.get();
      item(It, enter(S, G));
    }
    closeAll(S);
  }

  void item(const WeightItem &It, unsigned Depth) {
    switch (It.K) {
    case WeightItem::TensorItem: {
      const TensorRule &T = *It.Tensor;
      comments(T.Range.Start, Depth);
      std::string Head =
          std::string(T.Optional ? "optional " : "") + (T.Override ? "override " : "") + print(T.Target);
      std::string Tail = (T.Style.empty() ? "" : " : " + T.Style) + when(T.OwnWhen) + ";";
      std::vector<std::string> Alts;
      size_t Width = 2 * Depth + Head.size() + 4 + Tail.size();
      for (auto &A : T.Alternatives) {
        Alts.push_back(source(*A));
        Width += Alts.back().size() + 3;
      }
      if (Alts.size() == 1 || Width <= 120 + 3) {
        line(Depth, Head, " <- ", llvm::join(Alts, " | ") + Tail);
      } else {
        // One alternative per line, the preferred one first.
        indent(Depth);
        OS << Head << "\n";
        for (size_t I = 0; I < Alts.size(); ++I) {
          indent(Depth + 2);
          OS << (I ? "| " : "<- ") << Alts[I] << (I + 1 == Alts.size() ? Tail : "") << "\n";
        }
      }
      ended(T.Range.End);
      return;
    }
    case WeightItem::IgnoreItem:
      comments(It.Ignore->Range.Start, Depth);
      indent(Depth);
      OS << "ignore " << print(It.Ignore->Pat) << when(It.Ignore->OwnWhen) << ";\n";
      ended(It.Ignore->Range.End);
      return;
    case WeightItem::TieItem:
      comments(It.Tie->Range.Start, Depth);
      indent(Depth);
      OS << "tie " << print(It.Tie->Copy) << " = " << print(It.Tie->Of) << when(It.Tie->OwnWhen) << ";\n";
      ended(It.Tie->Range.End);
      return;
    case WeightItem::BlockItem: {
      const WeightBlock &B = *It.Block;
      comments(B.Range.Start, Depth);
      indent(Depth);
      OS << "block " << B.Name << " {\n";
      items(B.Items, nullptr, Depth + 1);
      comments(B.Range.End, Depth + 1);
      indent(Depth);
      OS << "}\n";
      ended(B.Range.End);
      return;
    }
    case WeightItem::UseItem:
      comments(It.Use->Range.Start, Depth);
      indent(Depth);
      OS << "use " << It.Use->Name << " at " << print(It.Use->At) << " from " << print(It.Use->From) << ";\n";
      ended(It.Use->Range.End);
      return;
    case WeightItem::ForItem: {
      const ForBlock &B = *It.For;
      comments(B.Range.Start, Depth);
      indent(Depth);
      OS << "for " << B.Var << " in "
         << (B.RangeName.empty() ? print(*B.Begin) + " .. " + print(*B.End) : B.RangeName) << when(B.Where, " where ")
         << " {\n";
      items(B.Items, B.Group.get(), Depth + 1);
      comments(B.Range.End, Depth + 1);
      indent(Depth);
      OS << "}\n";
      ended(B.Range.End);
      return;
    }
    }
  }

  void param(const ParamDecl &P, unsigned Depth) {
    comments(P.Range.Start, Depth);
    indent(Depth);
    OS << "param " << print(P.Local) << " [";
    for (size_t I = 0; I < P.Shape.size(); ++I)
      OS << (I ? ", " : "") << print(*P.Shape[I]);
    if (P.ShapeFromCheckpoint)
      OS << "..";
    OS << "] : " << P.Style;
    if (P.HasTE)
      OS << " te " << print(P.TE);
    if (P.HasDist)
      OS << " dist " << print(P.Dist);
    if (P.HasLocalDist)
      OS << " localdist " << print(P.LocalDist);
    if (P.Expert)
      OS << " expert";
    OS << when(P.When) << ";\n";
    ended(P.Range.End);
  }

  void use(const UseDecl &U, unsigned Depth) {
    comments(U.Range.Start, Depth);
    indent(Depth);
    OS << "use " << U.Block;
    if (!U.At.Pieces.empty())
      OS << " at " << print(U.At);
    OS << when(U.When) << ";\n";
    ended(U.Range.End);
  }

  void schemaDecl(const SchemaDecl &S) {
    comments(S.Range.Start, 0);
    OS << "schema " << S.Name << " {\n";
    for (auto &Fd : S.Fields) {
      comments(Fd.Range.Start, 1);
      indent(1);
      OS << "field " << Fd.Name << " : " << Fd.Type.Name;
      if (!Fd.Type.Values.empty()) {
        OS << "(";
        for (size_t I = 0; I < Fd.Type.Values.size(); ++I) {
          const std::string &V = Fd.Type.Values[I];
          bool Plain = !V.empty() && !std::isdigit(static_cast<unsigned char>(V[0]));
          for (char C : V)
            Plain &= std::isalnum(static_cast<unsigned char>(C)) || C == '_';
          OS << (I ? ", " : "") << (Plain ? V : quote(V));
        }
        OS << ")";
      }
      OS << (Fd.Type.Optional ? "?" : "");
      if (Fd.Default)
        OS << " = " << print(*Fd.Default);
      OS << ";\n";
      ended(Fd.Range.End);
    }
    for (auto &R : S.Ranges) {
      comments(R.Range.Start, 1);
      indent(1);
      OS << "range " << R.Name << "(" << R.Var << ") = " << print(*R.Count) << ";\n";
      ended(R.Range.End);
    }
    for (auto &B : S.Blocks) {
      comments(B.Range.Start, 1);
      indent(1);
      OS << "block " << B.Name << " {\n";
      for (auto &P : B.Params)
        param(P, 2);
      for (auto &U : B.Uses)
        use(U, 2);
      comments(B.Range.End, 2);
      indent(1);
      OS << "}\n";
      ended(B.Range.End);
    }
    for (auto &P : S.Params)
      param(P, 1);
    for (auto &U : S.Uses)
      use(U, 1);
    comments(S.Range.End, 1);
    OS << "}\n";
    ended(S.Range.End);
  }
};
} // namespace

void bridgec::formatFile(const File &F, const llvm::SourceMgr &, llvm::raw_ostream &OS) { Formatter(F, OS).run(); }
