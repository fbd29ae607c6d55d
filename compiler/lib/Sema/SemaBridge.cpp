//===- SemaBridge.cpp - a whole bridge: inheritance, duplicates, coverage -===//
//
// A bridge of the main file is its fragments, depth-first in order, then
// itself. Merged, it shows what no single declaration does: config fields,
// export paths and Megatron tensors given twice ('override' replaces), model
// types matched by two bridges, HF tensors claimed twice, config fields that
// depend on themselves, and HF fields read on import but never exported.
//
//===----------------------------------------------------------------------===//
#include "SemaImpl.h"

#include "bridgec/AST/Print.h"

#include "llvm/ADT/StringExtras.h"

#include <algorithm>
#include <functional>

using namespace bridgec;
using namespace bridgec::sema;
using llvm::SMRange;

std::string model::ExportRule::path() const { return llvm::join(Path, "."); }

namespace {

/// Text that identifies when a rule applies, with loop variables renamed by
/// position so that 'for i in layers' and 'for j in layers' compare equal.
std::string guardOf(const std::vector<model::Loop> &Loops, const ast::ExprP &When,
                    std::map<std::string, std::string> &Rename) {
  std::string G;
  for (size_t I = 0; I < Loops.size(); ++I) {
    Rename[Loops[I].Var] = "$" + std::to_string(I);
    G += "for $" + std::to_string(I) + " in " +
         (Loops[I].RangeIndex >= 0 ? "#" + std::to_string(Loops[I].RangeIndex)
                                   : ast::print(*Loops[I].Begin, &Rename) + ".." + ast::print(*Loops[I].End, &Rename));
    if (Loops[I].Where)
      G += " where " + ast::print(*Loops[I].Where, &Rename);
    G += "; ";
  }
  if (When)
    G += "when " + ast::print(*When, &Rename);
  return G;
}

/// Whether two patterns can spell the same name (a capture matches digits).
bool unifiable(const model::Pattern &A, const model::Pattern &B) {
  // Flatten to a token list: a char, or -1 for a capture.
  auto Flat = [](const model::Pattern &P) {
    std::vector<int> T;
    for (auto &Pc : P.Pieces) {
      if (Pc.E)
        T.push_back(-1);
      else
        for (char C : Pc.Literal)
          T.push_back(static_cast<unsigned char>(C));
    }
    return T;
  };
  std::vector<int> X = Flat(A), Y = Flat(B);
  std::map<std::pair<size_t, size_t>, bool> Memo;
  std::function<bool(size_t, size_t)> Go = [&](size_t I, size_t J) -> bool {
    if (I == X.size() || J == Y.size())
      return I == X.size() && J == Y.size();
    auto Key = std::make_pair(I, J);
    if (auto It = Memo.find(Key); It != Memo.end())
      return It->second;
    bool R;
    auto IsDigit = [](int C) { return C >= '0' && C <= '9'; };
    if (X[I] == -1 && Y[J] == -1)
      R = Go(I + 1, J + 1);
    else if (X[I] == -1)
      R = IsDigit(Y[J]) && (Go(I + 1, J + 1) || Go(I, J + 1));
    else if (Y[J] == -1)
      R = IsDigit(X[I]) && (Go(I + 1, J + 1) || Go(I + 1, J));
    else
      R = X[I] == Y[J] && Go(I + 1, J + 1);
    return Memo[Key] = R;
  };
  return Go(0, 0);
}

/// Config and export rules of one bridge while its declarations are merged,
/// keyed by field or HF path.
struct Merged {
  std::map<unsigned, size_t> ConfigAt;
  std::vector<model::ConfigRule> Config;
  std::vector<std::set<std::string>> Deps; // parallel to Config
  std::map<std::string, size_t> ExportAt;
  std::vector<model::ExportRule> Export;
  std::vector<std::string> TensorGuards; // parallel to the bridge's tensors
};

class BridgeAssembler {
public:
  BridgeAssembler(ResolvedDecls &Decls, const model::Schema &S, DiagnosticEngine &Diags)
      : Decls(Decls), S(S), Diags(Diags) {}

  /// Bases depth-first in order, each once, then \p B.
  std::vector<const ast::BridgeDecl *> linearize(const ast::BridgeDecl &B) {
    std::vector<const ast::BridgeDecl *> Order;
    std::set<const ast::BridgeDecl *> Visiting, Done;
    std::function<void(const ast::BridgeDecl &)> Visit = [&](const ast::BridgeDecl &D) {
      if (Done.count(&D))
        return;
      Visiting.insert(&D);
      for (auto &Base : D.Bases) {
        auto It = Decls.ByName.find(Base.Name);
        if (It == Decls.ByName.end()) {
          std::vector<std::string> Frags;
          for (auto &[N, Dl] : Decls.ByName)
            if (Dl->IsFragment)
              Frags.push_back(N);
          Diags.emit(DiagId::UnknownBase, Base.Range, Base.Name, didYouMean(Base.Name, Frags));
          continue;
        }
        if (!It->second->IsFragment) {
          Diags.emit(DiagId::BaseNotFragment, Base.Range, Base.Name);
          continue;
        }
        if (Visiting.count(It->second)) {
          Diags.emit(DiagId::ImportCycle, Base.Range, "fragment '" + Base.Name + "' inherits from itself");
          continue;
        }
        Visit(*It->second);
      }
      Visiting.erase(&D);
      Done.insert(&D);
      Order.push_back(&D);
    };
    Visit(B);
    return Order;
  }

  /// Config rules are keyed by field; 'override' replaces.
  void mergeConfig(const Resolved &R, Merged &M) {
    for (size_t I = 0; I < R.Config.size(); ++I) {
      auto &C = R.Config[I];
      auto It = M.ConfigAt.find(C.Field);
      if (It != M.ConfigAt.end()) {
        if (!C.Override) {
          Diags.emit(DiagId::DuplicateConfigField, C.Loc, S.Fields[C.Field].Name);
          Diags.note(DiagId::NotePreviousHere, M.Config[It->second].Loc);
          continue;
        }
        M.Config[It->second] = C;
        M.Deps[It->second] = R.ConfigDeps[I];
      } else {
        if (C.Override)
          Diags.emit(DiagId::OverrideNothing, C.Loc, S.Fields[C.Field].Name);
        M.ConfigAt[C.Field] = M.Config.size();
        M.Config.push_back(C);
        M.Deps.push_back(R.ConfigDeps[I]);
      }
    }
  }

  /// Export rules are keyed by HF path; 'override' replaces.
  void mergeExport(const Resolved &R, Merged &M) {
    for (auto &E : R.Export) {
      auto It = M.ExportAt.find(E.path());
      if (It != M.ExportAt.end()) {
        if (!E.Override) {
          Diags.emit(DiagId::DuplicateExport, E.Loc, E.path());
          Diags.note(DiagId::NotePreviousHere, M.Export[It->second].Loc);
          continue;
        }
        M.Export[It->second] = E;
      } else {
        if (E.Override)
          Diags.emit(DiagId::OverrideNothing, E.Loc, "hf." + E.path());
        M.ExportAt[E.path()] = M.Export.size();
        M.Export.push_back(E);
      }
    }
  }

  /// Tensor rules are keyed by parameter and guard; 'override' replaces.
  void mergeTensors(const Resolved &R, std::vector<model::TensorRule> &Tensors, Merged &M) {
    for (auto &T : R.Tensors) {
      std::map<std::string, std::string> Rename;
      std::string Guard = std::to_string(T.Params[0]) + "|" + guardOf(T.Loops, T.When, Rename);
      size_t Found = Tensors.size();
      for (size_t K = 0; K < Tensors.size(); ++K)
        if (M.TensorGuards[K] == Guard)
          Found = K;
      if (Found != Tensors.size()) {
        if (!T.Override) {
          Diags.emit(DiagId::DuplicateTarget, T.Target.Loc, T.Target.str());
          Diags.note(DiagId::NoteOtherRuleHere, Tensors[Found].Loc);
          continue;
        }
        Tensors[Found] = T;
      } else {
        if (T.Override)
          Diags.emit(DiagId::OverrideNothing, T.Loc, T.Target.str());
        Tensors.push_back(T);
        M.TensorGuards.push_back(Guard);
      }
    }
  }

  /// A bridge needs a model type, and no two bridges may match the same one.
  void checkMatches(const ast::BridgeDecl &B, const std::vector<const ast::BridgeDecl *> &Order,
                    const model::Bridge &MB, std::map<std::string, std::string> &MatchedBy) {
    if (MB.ModelTypes.empty())
      Diags.emit(DiagId::NoMatch, B.NameRange, B.Name);
    std::set<std::string> Own;
    for (const ast::BridgeDecl *D : Order)
      for (const ast::MatchDecl &M : D->Matches) {
        if (M.Key != "model_type")
          continue;
        auto [It, New] = MatchedBy.emplace("model_type:" + M.Value, B.Name);
        if (!New || !Own.insert(M.Value).second)
          Diags.emit(DiagId::DuplicateMatch, M.Range, "model_type", M.Value, It->second);
      }
  }

  /// HF tensors claimed twice, among all rules, ignores and ties.
  void checkClaims(const model::Bridge &MB) {
    struct Claim {
      model::Pattern Pat;
      std::string Guard;
      SMRange Loc;
      // Alternatives of one rule may read the same tensor: one is taken.
      int Rule = -1, Alternative = -1;
      // Read through 'rows': the block taken ('index = ...' as written);
      // rules may share a tensor by taking different blocks of it.
      std::string Block;
    };
    std::vector<Claim> Claims;
    for (size_t R = 0; R < MB.Tensors.size(); ++R) {
      auto &T = MB.Tensors[R];
      std::map<std::string, std::string> Rn;
      std::string G = guardOf(T.Loops, T.When, Rn);
      for (size_t A = 0; A < T.Alternatives.size(); ++A) {
        const auto &Nodes = T.Alternatives[A];
        for (size_t K = 0; K < Nodes.size(); ++K) {
          if (!Nodes[K].IsSource)
            continue;
          Claim C{Nodes[K].Source, G, Nodes[K].Loc, static_cast<int>(R), static_cast<int>(A)};
          // Postfix order puts a one-input op right after its source.
          if (K + 1 < Nodes.size() && !Nodes[K + 1].IsSource && Nodes[K + 1].Kind == bridge::Op::RowBlock)
            for (auto &[Name, Value] : Nodes[K + 1].Params)
              if (Name == "index" && Value)
                C.Block = ast::print(*Value, &Rn);
          Claims.push_back(std::move(C));
        }
      }
    }
    for (auto &I : MB.Ignores) {
      std::map<std::string, std::string> Rn;
      Claims.push_back({I.Pat, guardOf(I.Loops, I.When, Rn), I.Loc});
    }
    for (auto &T : MB.Ties) {
      std::map<std::string, std::string> Rn;
      Claims.push_back({T.Copy, guardOf(T.Loops, T.When, Rn), T.Loc});
    }
    for (size_t I = 0; I < Claims.size(); ++I)
      for (size_t J = 0; J < I; ++J)
        if (Claims[I].Guard == Claims[J].Guard && unifiable(Claims[I].Pat, Claims[J].Pat) &&
            !(Claims[I].Rule >= 0 && Claims[I].Rule == Claims[J].Rule &&
              Claims[I].Alternative != Claims[J].Alternative) &&
            !(!Claims[I].Block.empty() && !Claims[J].Block.empty() && Claims[I].Block != Claims[J].Block)) {
          Diags.emit(DiagId::SourceClaimedTwice, Claims[I].Pat.Loc.isValid() ? Claims[I].Pat.Loc : Claims[I].Loc,
                     Claims[I].Pat.str());
          Diags.note(DiagId::NoteOtherRuleHere, Claims[J].Pat.Loc.isValid() ? Claims[J].Pat.Loc : Claims[J].Loc);
          break;
        }
  }

  /// Config rules with their dependencies first, into \p MB; cycles are
  /// errors.
  void orderConfig(const Merged &M, model::Bridge &MB) {
    std::vector<int> State(M.Config.size(), 0);
    std::vector<size_t> Sorted;
    std::vector<std::string> Path;
    std::function<void(size_t)> Topo = [&](size_t I) {
      if (State[I] == 2)
        return;
      const std::string &Name = S.Fields[M.Config[I].Field].Name;
      if (State[I] == 1) {
        std::string Chain;
        bool On = false;
        for (auto &P : Path) {
          On |= P == Name;
          if (On)
            Chain += P + " -> ";
        }
        Diags.emit(DiagId::ConfigCycle, M.Config[I].Loc, Name, Chain + Name);
        return;
      }
      State[I] = 1;
      Path.push_back(Name);
      for (auto &Dep : M.Deps[I]) {
        auto FIt = S.FieldIndex.find(Dep);
        if (FIt == S.FieldIndex.end())
          continue;
        auto CIt = M.ConfigAt.find(FIt->second);
        if (CIt != M.ConfigAt.end())
          Topo(CIt->second);
      }
      Path.pop_back();
      State[I] = 2;
      Sorted.push_back(I);
    };
    for (size_t I = 0; I < M.Config.size(); ++I)
      Topo(I);
    for (size_t I : Sorted)
      MB.Config.push_back(M.Config[I]);
  }

  /// Export rules for plain renames ('field = hf.x' or 'field = hf.x ??
  /// literal') that no explicit rule writes: the reverse of the rename.
  void deriveExports(Merged &M) {
    for (auto &C : M.Config) {
      if (C.When)
        continue;
      const ast::Expr *V = C.Value.get();
      if (V->K == ast::Expr::Coalesce) {
        bool Literals = true;
        for (size_t K = 1; K < V->Ops.size(); ++K) {
          auto Kd = V->Ops[K]->K;
          Literals &= Kd == ast::Expr::Int || Kd == ast::Expr::Float || Kd == ast::Expr::String ||
                      Kd == ast::Expr::Bool || Kd == ast::Expr::Null;
        }
        V = Literals ? V->Ops[0].get() : nullptr;
      }
      if (!V || V->K != ast::Expr::HFPath)
        continue;
      std::string P = llvm::join(V->Path, ".");
      if (M.ExportAt.count(P))
        continue;
      model::ExportRule E;
      E.Path = V->Path;
      auto Ref = std::make_shared<ast::Expr>();
      Ref->K = ast::Expr::Name;
      Ref->Text = S.Fields[C.Field].Name;
      Ref->Range = C.Loc;
      E.Value = Ref;
      E.Derived = true;
      E.Loc = C.Loc;
      M.ExportAt[P] = M.Export.size();
      M.Export.push_back(E);
    }
  }

  /// Every HF field read on import must be written back on export. Only the
  /// config rules that survived overrides count.
  void checkExportCoverage(const model::Bridge &MB, Merged &M) {
    std::vector<std::pair<std::vector<std::string>, SMRange>> FinalReads;
    std::function<void(const ast::Expr &)> Reads = [&](const ast::Expr &E) {
      if (E.K == ast::Expr::HFPath)
        FinalReads.push_back({E.Path, E.Range});
      for (auto &O : E.Ops)
        Reads(*O);
    };
    for (auto &C : MB.Config) {
      Reads(*C.Value);
      if (C.When)
        Reads(*C.When);
    }
    for (auto &[Path, Loc] : FinalReads) {
      std::string P = llvm::join(Path, ".");
      // A read through an alias is covered by writing the primary spelling.
      for (auto &[Primary, Alt] : MB.Aliases)
        if (P == Alt || llvm::StringRef(P).startswith(Alt + "."))
          P = Primary.empty() ? P.substr(std::min(P.size(), Alt.size() + 1)) : Primary + P.substr(Alt.size());
      bool Covered = P == "model_type" || P == "architectures";
      for (auto &E : M.Export) {
        std::string W = E.path();
        Covered |= P == W || llvm::StringRef(P).startswith(W + ".") || llvm::StringRef(W).startswith(P + ".");
      }
      if (!Covered) {
        Diags.emit(DiagId::NotExported, Loc, P);
        M.ExportAt[P] = ~size_t(0); // report each field once
        model::ExportRule Dummy;
        Dummy.Path = Path;
        M.Export.push_back(Dummy);
      }
    }
  }

private:
  ResolvedDecls &Decls;
  const model::Schema &S;
  DiagnosticEngine &Diags;
};

} // namespace

model::Bridge sema::assembleBridge(const ast::BridgeDecl &B, const std::string &File, ResolvedDecls &Decls,
                                   const model::Schema &S, std::map<std::string, std::string> &MatchedBy,
                                   DiagnosticEngine &Diags) {
  BridgeAssembler A(Decls, S, Diags);
  std::vector<const ast::BridgeDecl *> Order = A.linearize(B);

  model::Bridge MB;
  MB.Name = B.Name;
  MB.Loc = B.NameRange;
  MB.File = File;
  Merged M;
  for (const ast::BridgeDecl *D : Order) {
    Resolved &R = Decls.ByDecl[D];
    for (auto &T : R.ModelTypes)
      MB.ModelTypes.push_back(T);
    for (auto &T : R.Architectures)
      MB.Architectures.push_back(T);
    for (auto &Al : R.Aliases)
      if (std::find(MB.Aliases.begin(), MB.Aliases.end(), Al) == MB.Aliases.end())
        MB.Aliases.push_back(Al);
    for (auto &Rq : R.Requires)
      MB.Requires.push_back(Rq);
    A.mergeConfig(R, M);
    A.mergeExport(R, M);
    A.mergeTensors(R, MB.Tensors, M);
    for (auto &I : R.Ignores)
      MB.Ignores.push_back(I);
    for (auto &T : R.Ties)
      MB.Ties.push_back(T);
  }
  A.checkMatches(B, Order, MB, MatchedBy);
  A.checkClaims(MB);
  A.orderConfig(M, MB);
  A.deriveExports(M);
  MB.Export = M.Export;
  A.checkExportCoverage(MB, M);
  return MB;
}
