//===- ASTBuilder.cpp - ANTLR parse tree to our AST ----------------------===//
//
// Walks the parse tree once and builds ast::File. After a syntax error ANTLR
// leaves holes (null children); every accessor is checked and incomplete
// constructs are dropped, since the error was already reported.
//
//===----------------------------------------------------------------------===//
#include "ParseImpl.h"

#include "bridgec/AST/Print.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <map>
#include <optional>

using namespace bridgec;
using P = ::bridge::grammar::BridgeParser;

namespace {

class ASTBuilder {
public:
  explicit ASTBuilder(ParseContext &Ctx) : Ctx(Ctx) {}

  std::unique_ptr<ast::File> build(P::FileContext *C) {
    auto F = std::make_unique<ast::File>();
    if (!C)
      return F;
    for (auto *I : C->importDecl()) {
      if (!I->STRING())
        continue;
      F->Imports.push_back({Ctx.range(I), unquote(I->STRING()->getText())});
    }
    for (auto *T : C->topDecl()) {
      if (T->bridgeDecl())
        if (auto B = bridge(T->bridgeDecl()))
          F->Bridges.push_back(std::move(*B));
      if (T->schemaDecl())
        F->Schemas.push_back(schema(T->schemaDecl()));
      if (T->recipeDecl())
        if (auto Rc = recipe(T->recipeDecl()))
          F->Recipes.push_back(std::move(*Rc));
    }
    return F;
  }

private:
  ParseContext &Ctx;

  llvm::SMRange R(antlr4::ParserRuleContext *C) { return Ctx.range(C); }
  llvm::SMRange R(antlr4::tree::TerminalNode *N) { return Ctx.tokenRange(N->getSymbol()); }

  static std::string unquote(const std::string &S) {
    std::string Out;
    for (size_t I = 1; I + 1 < S.size(); ++I) {
      char C = S[I];
      if (C == '\\' && I + 2 < S.size()) {
        char N = S[++I];
        Out += N == 'n' ? '\n' : N == 't' ? '\t' : N;
      } else {
        Out += C;
      }
    }
    return Out;
  }

  std::string text(P::NameContext *N) { return N ? N->getText() : std::string(); }

  // ---- bridges --------------------------------------------------------------
  std::optional<ast::BridgeDecl> bridge(P::BridgeDeclContext *C) {
    if (!C->name())
      return std::nullopt;
    ast::BridgeDecl B;
    B.Range = R(C);
    B.IsFragment = C->kind && C->kind->getType() == P::FRAGMENT;
    B.Name = text(C->name());
    B.NameRange = R(C->name());
    if (auto *BL = C->baseList())
      for (auto *N : BL->name())
        B.Bases.push_back({N->getText(), R(N)});
    // The lets first: each may use the lets before it, the sections any.
    Lets.clear();
    for (auto *I : C->bridgeItem())
      if (auto *L = I->letDecl())
        letDecl(L, B);
    auto First = [&](llvm::SMLoc &At, antlr4::ParserRuleContext *S) {
      if (!At.isValid())
        At = R(S).Start;
    };
    for (auto *I : C->bridgeItem()) {
      if (I->letDecl())
        continue;
      if (auto *M = I->matchDecl()) {
        if (M->name() && M->STRING())
          B.Matches.push_back({R(M), M->name()->getText(), R(M->name()), unquote(M->STRING()->getText())});
      } else if (auto *AD = I->aliasDecl()) {
        // 'alias hf = hf.x;' has one path (the section), an empty primary.
        auto Ps = AD->hfPath();
        if (Ps.empty() || Ps.size() > 2)
          continue;
        ast::AliasDecl A;
        A.Range = R(AD);
        if (Ps.size() == 2)
          for (auto *N : Ps[0]->name())
            A.Primary.push_back(N->getText());
        for (auto *N : Ps.back()->name())
          A.Alternative.push_back(N->getText());
        B.Aliases.push_back(std::move(A));
      } else if (auto *CB = I->configBlock()) {
        First(B.ConfigAt, CB);
        for (auto *Ci : CB->configItem())
          configItem(Ci, B, nullptr);
      } else if (auto *EB = I->exportBlock()) {
        First(B.ExportAt, EB);
        for (auto *Ei : EB->exportItem())
          exportItem(Ei, B, nullptr);
      } else if (auto *WB = I->weightsBlock()) {
        First(B.WeightsAt, WB);
        for (auto *Q : WB->quantizedDecl()) {
          auto Names = Q->name();
          auto Strings = Q->STRING();
          if (Names.size() != 2 || Strings.size() < 2)
            continue;
          ast::QuantizedDecl D;
          D.Range = R(Q);
          D.Scheme = Names[0]->getText();
          D.SchemeRange = R(Names[0]);
          D.Param = Names[1]->getText();
          D.ParamRange = R(Names[1]);
          D.Suffix = unquote(Strings[0]->getText());
          for (size_t I = 1; I < Strings.size(); ++I)
            D.Globs.push_back({unquote(Strings[I]->getText()), Ctx.tokenRange(Strings[I]->getSymbol())});
          B.Quantized.push_back(std::move(D));
        }
        for (auto *W : WB->weightItem())
          weightItem(W, B.Weights, nullptr);
      }
    }
    for (auto &L : B.Lets)
      if (auto It = Lets.find(L.Name); It != Lets.end() && It->second.NameRange.Start == L.NameRange.Start &&
                                       It->second.Uses == 0)
        Ctx.Diags.emit(DiagId::UnusedLet, L.NameRange, L.Name);
    Lets.clear();
    for (auto &[Name, Info] : Blocks)
      if (Info.Uses == 0)
        Ctx.Diags.emit(DiagId::UnusedWeightBlock, Info.Block->NameRange, Name);
    Blocks.clear();
    return B;
  }

  // ---- lets -------------------------------------------------------------------
  /// The lets of the bridge being built, by name.
  struct LetInfo {
    ast::ExprP Value;
    llvm::SMRange NameRange;
    size_t Size = 0;   ///< expression nodes once written out (saturating)
    unsigned Uses = 0;
  };
  std::map<std::string, LetInfo> Lets;
  /// The loop variables bound where the expression being built stands: a
  /// name bound by a loop is the loop variable, never a let.
  std::vector<std::string> LoopVars;
  /// A let may stand for at most this many expression nodes written out,
  /// so that lets of lets cannot blow up (each use doubling the last).
  static constexpr size_t MaxLetSize = 4096;

  /// Nodes of \p E written out; a use of a let counts that let's size
  /// without walking its copy again.
  size_t size(const ast::Expr &E) {
    if (!E.LetUse.empty())
      if (auto It = Lets.find(E.LetUse); It != Lets.end())
        return It->second.Size;
    size_t N = 1;
    for (auto &Op : E.Ops)
      N = std::min(N + size(*Op), MaxLetSize + 1);
    return N;
  }

  void letDecl(P::LetDeclContext *C, ast::BridgeDecl &B) {
    if (!C->name() || !C->expr())
      return;
    ast::LetDecl L;
    L.Range = R(C);
    L.Name = C->name()->getText();
    L.NameRange = R(C->name());
    L.Value = expr(C->expr());
    if (!L.Value)
      return;
    if (auto It = Lets.find(L.Name); It != Lets.end()) {
      Ctx.Diags.emit(DiagId::DuplicateLet, L.NameRange, L.Name);
      Ctx.Diags.note(DiagId::NotePreviousHere, It->second.NameRange);
    } else {
      size_t N = size(*L.Value);
      if (N > MaxLetSize)
        Ctx.Diags.emit(DiagId::LetTooLarge, L.NameRange, L.Name, MaxLetSize);
      else
        Lets[L.Name] = {L.Value, L.NameRange, N};
    }
    B.Lets.push_back(std::move(L));
  }

  /// A use of the let \p Name at \p Rg: a new root over the let's
  /// expression (the nodes below are shared, and only read), carrying the
  /// use's range and spelling.
  ast::ExprP letUse(LetInfo &L, const std::string &Name, llvm::SMRange Rg) {
    ++L.Uses;
    auto E = std::make_shared<ast::Expr>(*L.Value);
    E->Range = Rg;
    E->LetUse = Name;
    return E;
  }

  // ---- guarded groups ---------------------------------------------------------
  /// A copy of \p E with fresh nodes (each rule owns its condition).
  static ast::ExprP clone(const ast::ExprP &E) {
    if (!E)
      return nullptr;
    auto C = std::make_shared<ast::Expr>(*E);
    for (auto &Op : C->Ops)
      Op = clone(Op);
    return C;
  }

  /// \p Own conjoined to the conditions of \p G and its outer groups,
  /// outermost first. Built as the parser builds 'G && Own' (a left-leaning
  /// '&&' chain), so a rule moved into a group means exactly what it meant
  /// with the guard written out.
  ast::ExprP guarded(const ast::GuardGroupP &G, const ast::ExprP &Own) {
    if (!G)
      return Own;
    ast::ExprP Acc = guarded(G->Outer, clone(G->Cond));
    if (!Own)
      return Acc;
    // The operands of Own's top-level '&&' chain, leftmost first.
    std::vector<ast::ExprP> Chain;
    ast::ExprP E = Own;
    while (E->K == ast::Expr::Binary && E->Text == "&&") {
      Chain.push_back(E->Ops[1]);
      E = E->Ops[0];
    }
    Chain.push_back(E);
    for (auto It = Chain.rbegin(); It != Chain.rend(); ++It) {
      auto And = make(ast::Expr::Binary, {Acc->Range.Start, (*It)->Range.End});
      And->Text = "&&";
      And->Ops = {Acc, *It};
      Acc = And;
    }
    return Acc;
  }

  /// The group of 'when COND {' inside \p Outer; null after a syntax error.
  ast::GuardGroupP group(antlr4::ParserRuleContext *C, P::ExprContext *Cond, size_t Items,
                         const ast::GuardGroupP &Outer) {
    if (!Cond)
      return nullptr;
    auto G = std::make_shared<ast::GuardGroup>();
    G->Range = R(C);
    G->Cond = expr(Cond);
    G->Outer = Outer;
    if (!G->Cond)
      return nullptr;
    if (Items == 0)
      Ctx.Diags.emit(DiagId::EmptyGuardGroup, G->Range, ast::print(*G->Cond));
    return G;
  }

  void configItem(P::ConfigItemContext *C, ast::BridgeDecl &B, const ast::GuardGroupP &G) {
    if (auto *Rq = C->requireStmt()) {
      if (G) {
        Ctx.Diags.emit(DiagId::GuardedRequire, R(Rq), ast::print(*G->Cond));
        return;
      }
      if (Rq->expr() && Rq->STRING())
        if (auto Cond = expr(Rq->expr()))
          B.Requires.push_back({R(Rq), Cond, unquote(Rq->STRING()->getText())});
      return;
    }
    if (auto *Gc = C->configGroup()) {
      if (auto Sub = group(Gc, Gc->expr(), Gc->configItem().size(), G))
        for (auto *Ci : Gc->configItem())
          configItem(Ci, B, Sub);
      return;
    }
    auto *A = C->configAssign();
    if (!A)
      return;
    auto Es = A->expr();
    if (!A->name() || Es.empty())
      return;
    ast::ConfigAssign CA;
    CA.Range = R(A);
    CA.Override = A->OVERRIDE() != nullptr;
    CA.Field = A->name()->getText();
    CA.FieldRange = R(A->name());
    CA.Value = expr(Es[0]);
    if (Es.size() > 1)
      CA.OwnWhen = expr(Es[1]);
    CA.When = guarded(G, CA.OwnWhen);
    CA.Group = G;
    if (CA.Value)
      B.Config.push_back(std::move(CA));
  }

  void exportItem(P::ExportItemContext *C, ast::BridgeDecl &B, const ast::GuardGroupP &G) {
    if (auto *Gc = C->exportGroup()) {
      if (auto Sub = group(Gc, Gc->expr(), Gc->exportItem().size(), G))
        for (auto *Ei : Gc->exportItem())
          exportItem(Ei, B, Sub);
      return;
    }
    auto *A = C->exportAssign();
    if (!A)
      return;
    auto Es = A->expr();
    if (!A->hfPath() || Es.empty())
      return;
    ast::ExportAssign EA;
    EA.Range = R(A);
    EA.Override = A->OVERRIDE() != nullptr;
    for (auto *N : A->hfPath()->name())
      EA.Path.push_back(N->getText());
    EA.PathRange = R(A->hfPath());
    EA.Value = expr(Es[0]);
    if (Es.size() > 1)
      EA.OwnWhen = expr(Es[1]);
    EA.When = guarded(G, EA.OwnWhen);
    EA.Group = G;
    if (EA.Value && !EA.Path.empty())
      B.Export.push_back(std::move(EA));
  }

  /// Appends the rules of \p C to \p Out; a guarded group's rules go to
  /// \p Out directly, each with the group's condition.
  void weightItem(P::WeightItemContext *C, std::vector<ast::WeightItem> &Out, const ast::GuardGroupP &G) {
    if (auto *Bc = C->weightBlock()) {
      if (auto It = weightBlock(Bc, G))
        Out.push_back(std::move(*It));
      return;
    }
    if (auto *Uc = C->weightUse()) {
      if (auto It = weightUse(Uc, G))
        Out.push_back(std::move(*It));
      return;
    }
    if (auto *Gc = C->weightGroup()) {
      if (auto Sub = group(Gc, Gc->expr(), Gc->weightItem().size(), G))
        for (auto *W : Gc->weightItem())
          weightItem(W, Out, Sub);
      return;
    }
    if (auto It = weightItem(C, G))
      Out.push_back(std::move(*It));
  }

  std::optional<ast::WeightItem> weightItem(P::WeightItemContext *C, const ast::GuardGroupP &G) {
    ast::WeightItem It;
    if (auto *T = C->tensorRule()) {
      auto Pat = T->pattern();
      if (!Pat || T->source().empty())
        return std::nullopt;
      auto TR = std::make_shared<ast::TensorRule>();
      TR->Range = R(T);
      TR->Optional = !T->OPTIONAL().empty();
      TR->Override = !T->OVERRIDE().empty();
      TR->Target = pattern(Pat);
      for (auto *Alt : T->source()) {
        TR->Alternatives.push_back(source(Alt));
        if (!TR->Alternatives.back())
          return std::nullopt;
      }
      if (T->name()) {
        TR->Style = T->name()->getText();
        TR->StyleRange = R(T->name());
      }
      if (T->expr())
        TR->OwnWhen = expr(T->expr());
      TR->When = guarded(G, TR->OwnWhen);
      TR->Group = G;
      It.K = ast::WeightItem::TensorItem;
      It.Tensor = TR;
      return It;
    }
    if (auto *I = C->ignoreRule()) {
      if (!I->pattern())
        return std::nullopt;
      auto IR = std::make_shared<ast::IgnoreRule>();
      IR->Range = R(I);
      IR->Pat = pattern(I->pattern());
      if (I->expr())
        IR->OwnWhen = expr(I->expr());
      IR->When = guarded(G, IR->OwnWhen);
      IR->Group = G;
      It.K = ast::WeightItem::IgnoreItem;
      It.Ignore = IR;
      return It;
    }
    if (auto *T = C->tieRule()) {
      auto Ps = T->pattern();
      if (Ps.size() != 2)
        return std::nullopt;
      auto TR = std::make_shared<ast::TieRule>();
      TR->Range = R(T);
      TR->Copy = pattern(Ps[0]);
      TR->Of = pattern(Ps[1]);
      if (T->expr())
        TR->OwnWhen = expr(T->expr());
      TR->When = guarded(G, TR->OwnWhen);
      TR->Group = G;
      It.K = ast::WeightItem::TieItem;
      It.Tie = TR;
      return It;
    }
    if (auto *F = C->forBlock()) {
      if (!F->name() || !F->rangeSpec())
        return std::nullopt;
      auto FB = std::make_shared<ast::ForBlock>();
      FB->Range = R(F);
      FB->Var = F->name()->getText();
      FB->VarRange = R(F->name());
      if (auto *Named = dynamic_cast<P::RangeNamedContext *>(F->rangeSpec())) {
        if (!Named->name())
          return std::nullopt;
        FB->RangeName = Named->name()->getText();
        FB->RangeNameRange = R(Named->name());
      } else if (auto *Bounds = dynamic_cast<P::RangeBoundsContext *>(F->rangeSpec())) {
        auto Es = Bounds->expr();
        if (Es.size() != 2)
          return std::nullopt;
        FB->Begin = expr(Es[0]);
        FB->End = expr(Es[1]);
        if (!FB->Begin || !FB->End)
          return std::nullopt;
      } else {
        return std::nullopt; // neither form: the parser reported the error
      }
      if (FB->RangeName.empty() && (!FB->Begin || !FB->End))
        return std::nullopt;
      if (Lets.count(FB->Var))
        Ctx.Diags.emit(DiagId::LoopVarIsLet, FB->VarRange, FB->Var);
      LoopVars.push_back(FB->Var);
      if (F->expr())
        FB->Where = expr(F->expr());
      FB->Group = G;
      for (auto *W : F->weightItem())
        weightItem(W, FB->Items, G);
      LoopVars.pop_back();
      It.K = ast::WeightItem::ForItem;
      It.For = FB;
      return It;
    }
    return std::nullopt;
  }

  // ---- weight blocks ---------------------------------------------------------
  struct BlockInfo {
    std::shared_ptr<const ast::WeightBlock> Block;
    unsigned Uses = 0;
  };
  /// The weight blocks of the bridge being built, by name.
  std::map<std::string, BlockInfo> Blocks;

  std::optional<ast::WeightItem> weightBlock(P::WeightBlockContext *C, const ast::GuardGroupP &G) {
    if (!C->name())
      return std::nullopt;
    auto WB = std::make_shared<ast::WeightBlock>();
    WB->Range = R(C);
    WB->Name = C->name()->getText();
    WB->NameRange = R(C->name());
    WB->Group = G;
    // The block's own groups start inside it: a use adds the groups around
    // the use instead.
    for (auto *W : C->weightItem())
      weightItem(W, WB->Items, nullptr);
    if (auto It = Blocks.find(WB->Name); It != Blocks.end()) {
      Ctx.Diags.emit(DiagId::DuplicateWeightBlock, WB->NameRange, WB->Name);
      Ctx.Diags.note(DiagId::NotePreviousHere, It->second.Block->NameRange);
    } else {
      Blocks[WB->Name] = {WB};
    }
    ast::WeightItem It;
    It.K = ast::WeightItem::BlockItem;
    It.Block = WB;
    return It;
  }

  std::optional<ast::WeightItem> weightUse(P::WeightUseContext *C, const ast::GuardGroupP &G) {
    auto Ps = C->pattern();
    if (!C->name() || Ps.size() != 2)
      return std::nullopt;
    auto U = std::make_shared<ast::WeightUse>();
    U->Range = R(C);
    U->Name = C->name()->getText();
    U->NameRange = R(C->name());
    U->At = pattern(Ps[0]);
    U->From = pattern(Ps[1]);
    U->Group = G;
    auto It = Blocks.find(U->Name);
    if (It == Blocks.end()) {
      std::vector<std::string> Names;
      for (auto &[N, _] : Blocks)
        Names.push_back(N);
      Ctx.Diags.emit(DiagId::UnknownWeightBlock, U->NameRange, U->Name, didYouMean(U->Name, Names));
      return std::nullopt;
    }
    ++It->second.Uses;
    for (const ast::WeightItem &Item : It->second.Block->Items)
      U->Expanded.push_back(instantiate(Item, *U));
    ast::WeightItem Out;
    Out.K = ast::WeightItem::UseItem;
    Out.Use = U;
    return Out;
  }

  /// \p Prefix, a '.', then \p Rel: literal text joined as the builder
  /// joins a name written out, captures copied.
  static ast::Pattern prefixed(const ast::Pattern &Prefix, const ast::Pattern &Rel) {
    ast::Pattern Out;
    Out.Range = Rel.Range;
    auto Add = [&](const ast::PatternPiece &Pc) {
      if (Pc.K == ast::PatternPiece::Literal && !Out.Pieces.empty() &&
          Out.Pieces.back().K == ast::PatternPiece::Literal) {
        Out.Pieces.back().Text += Pc.Text;
        return;
      }
      ast::PatternPiece C = Pc;
      C.E = clone(Pc.E);
      Out.Pieces.push_back(std::move(C));
    };
    for (const ast::PatternPiece &Pc : Prefix.Pieces)
      Add(Pc);
    ast::PatternPiece Dot;
    Dot.K = ast::PatternPiece::Literal;
    Dot.Range = Rel.Range;
    Dot.Text = ".";
    Add(Dot);
    for (const ast::PatternPiece &Pc : Rel.Pieces)
      Add(Pc);
    return Out;
  }

  static ast::SourceP prefixedSource(const ast::SourceP &S, const ast::Pattern &From) {
    auto Out = std::make_shared<ast::Source>(*S);
    if (S->K == ast::Source::PatternRef)
      Out->Pat = prefixed(From, S->Pat);
    for (ast::OpArg &A : Out->Args)
      if (A.Src)
        A.Src = prefixedSource(A.Src, From);
    return Out;
  }

  /// Item \p It of a block as written at the use \p U: names prefixed, and
  /// the conditions of the groups around the use conjoined to each rule's.
  ast::WeightItem instantiate(const ast::WeightItem &It, const ast::WeightUse &U) {
    ast::WeightItem Out = It;
    switch (It.K) {
    case ast::WeightItem::TensorItem: {
      auto T = std::make_shared<ast::TensorRule>(*It.Tensor);
      T->Target = prefixed(U.At, T->Target);
      for (ast::SourceP &A : T->Alternatives)
        A = prefixedSource(A, U.From);
      T->When = guarded(U.Group, T->When);
      Out.Tensor = T;
      break;
    }
    case ast::WeightItem::IgnoreItem: {
      auto I = std::make_shared<ast::IgnoreRule>(*It.Ignore);
      I->Pat = prefixed(U.From, I->Pat);
      I->When = guarded(U.Group, I->When);
      Out.Ignore = I;
      break;
    }
    case ast::WeightItem::TieItem: {
      auto T = std::make_shared<ast::TieRule>(*It.Tie);
      T->Copy = prefixed(U.From, T->Copy);
      T->Of = prefixed(U.From, T->Of);
      T->When = guarded(U.Group, T->When);
      Out.Tie = T;
      break;
    }
    case ast::WeightItem::ForItem: {
      auto F = std::make_shared<ast::ForBlock>(*It.For);
      for (ast::WeightItem &Sub : F->Items)
        Sub = instantiate(Sub, U);
      // A loop's 'where' holds for its rules; the groups around the use are
      // conjoined to each rule inside.
      Out.For = F;
      break;
    }
    case ast::WeightItem::BlockItem:
      break; // a block declared inside a block: its uses are expanded already
    case ast::WeightItem::UseItem: {
      auto V = std::make_shared<ast::WeightUse>(*It.Use);
      for (ast::WeightItem &Sub : V->Expanded)
        Sub = instantiate(Sub, U);
      Out.Use = V;
      break;
    }
    }
    return Out;
  }

  ast::SourceP source(P::SourceContext *C) {
    if (!C)
      return nullptr;
    auto S = std::make_shared<ast::Source>();
    S->Range = R(C);
    if (auto *PC = dynamic_cast<P::SourcePatternContext *>(C)) {
      if (!PC->pattern())
        return nullptr;
      S->K = ast::Source::PatternRef;
      S->Pat = pattern(PC->pattern());
      S->OptionalInput = PC->QUESTION() != nullptr;
      return S;
    }
    auto *OC = dynamic_cast<P::SourceOpContext *>(C);
    if (!OC || !OC->name())
      return nullptr;
    S->K = ast::Source::Op;
    S->Escape = OC->AT() != nullptr;
    S->OpName = OC->name()->getText();
    S->OpNameRange = R(OC->name());
    if (S->Escape) // the range of '@name'
      S->OpNameRange.Start = Ctx.tokenRange(OC->AT()->getSymbol()).Start;
    for (auto *A : OC->opArg()) {
      ast::OpArg Arg;
      Arg.Range = R(A);
      if (auto *PP = dynamic_cast<P::OpParamContext *>(A)) {
        if (!PP->name() || !PP->expr())
          continue;
        Arg.Param = PP->name()->getText();
        Arg.ParamRange = R(PP->name());
        Arg.Value = expr(PP->expr());
        if (!Arg.Value)
          continue;
      } else if (auto *SP = dynamic_cast<P::OpSourceContext *>(A)) {
        Arg.Src = source(SP->source());
        if (!Arg.Src)
          continue;
      }
      S->Args.push_back(std::move(Arg));
    }
    return S;
  }

  /// Builds a pattern, merging names, numbers and dots into literal text,
  /// and rejects blanks or comments inside the name (BR0102).
  ast::Pattern pattern(P::PatternContext *C) {
    ast::Pattern Pat;
    Pat.Range = R(C);
    // Blanks are allowed inside '{...}' ('{k + n}'), nowhere else.
    bool Blank = false;
    int Depth = 0;
    if (C->getStart() && C->getStop())
      for (size_t I = C->getStart()->getTokenIndex(); I <= C->getStop()->getTokenIndex() && I < Ctx.Tokens->size(); ++I) {
        antlr4::Token *T = Ctx.Tokens->get(I);
        if (T->getType() == P::LBRACE)
          ++Depth;
        else if (T->getType() == P::RBRACE)
          --Depth;
        else if (T->getChannel() != antlr4::Token::DEFAULT_CHANNEL && Depth == 0)
          Blank = true;
      }
    auto AddLiteral = [&](const std::string &T, llvm::SMRange Rg) {
      if (!Pat.Pieces.empty() && Pat.Pieces.back().K == ast::PatternPiece::Literal) {
        Pat.Pieces.back().Text += T;
        Pat.Pieces.back().Range.End = Rg.End;
        return;
      }
      ast::PatternPiece Pc;
      Pc.K = ast::PatternPiece::Literal;
      Pc.Range = Rg;
      Pc.Text = T;
      Pat.Pieces.push_back(std::move(Pc));
    };
    bool First = true;
    for (auto *Seg : C->segment()) {
      if (!First)
        AddLiteral(".", {Seg->getStart() ? Ctx.loc(Seg->getStart()->getStartIndex() - 1) : llvm::SMLoc(),
                         Seg->getStart() ? Ctx.loc(Seg->getStart()->getStartIndex()) : llvm::SMLoc()});
      First = false;
      auto Brace = [&](P::BracePieceContext *B) {
        if (auto *A = dynamic_cast<P::PieceAlternativesContext *>(B)) {
          ast::PatternPiece Pp;
          Pp.K = ast::PatternPiece::Alternatives;
          Pp.Range = R(A);
          for (auto *N : A->altItem())
            Pp.Alts.push_back(N->getText());
          Pat.Pieces.push_back(std::move(Pp));
        } else if (auto *Cap = dynamic_cast<P::PieceCaptureContext *>(B)) {
          ast::PatternPiece Pp;
          Pp.K = ast::PatternPiece::Capture;
          Pp.Range = R(Cap);
          Pp.E = expr(Cap->expr());
          if (Pp.E)
            Pat.Pieces.push_back(std::move(Pp));
        }
      };
      if (auto *H = Seg->segmentHead()) {
        if (H->bracePiece())
          Brace(H->bracePiece());
        else
          AddLiteral(H->getText(), R(H));
      }
      for (auto *M : Seg->segmentMore()) {
        if (M->bracePiece())
          Brace(M->bracePiece());
        else
          AddLiteral(M->getText(), R(M));
      }
    }
    // '.**' ends the name: kept as literal text, which the schema's
    // pass-through parameters spell the same way.
    if (!C->STAR().empty())
      AddLiteral(".**", R(C->STAR().front()));
    if (Blank) {
      std::string Compact;
      for (auto &Pc : Pat.Pieces)
        Compact += Pc.K == ast::PatternPiece::Literal ? Pc.Text : "{...}";
      Ctx.Diags.emit(DiagId::BlankInsideName, Pat.Range, Compact);
    }
    return Pat;
  }

  // ---- recipes ----------------------------------------------------------------
  std::optional<ast::RecipeDecl> recipe(P::RecipeDeclContext *C) {
    if (!C->name())
      return std::nullopt;
    ast::RecipeDecl D;
    D.Range = R(C);
    D.IsPreset = C->kind && C->kind->getType() == P::PRESET;
    D.Name = text(C->name());
    D.NameRange = R(C->name());
    if (auto *BL = C->baseList())
      for (auto *N : BL->name())
        D.Bases.push_back({N->getText(), R(N)});
    for (auto *S : C->recipeSetting()) {
      if (!S->name() || !S->expr())
        continue;
      if (auto V = expr(S->expr()))
        D.Settings.push_back({R(S), S->name()->getText(), R(S->name()), V});
    }
    return D;
  }

  // ---- schema -----------------------------------------------------------------
  ast::SchemaDecl schema(P::SchemaDeclContext *C) {
    ast::SchemaDecl S;
    S.Range = R(C);
    S.Name = text(C->name());
    for (auto *I : C->schemaItem()) {
      if (auto *F = I->fieldDecl()) {
        if (!F->name() || !F->typeRef())
          continue;
        ast::FieldDecl FD;
        FD.Range = R(F);
        FD.Name = F->name()->getText();
        FD.NameRange = R(F->name());
        auto *T = F->typeRef();
        if (!T->name())
          continue;
        FD.Type.Range = R(T);
        FD.Type.Name = T->name()->getText();
        for (auto *V : T->enumValue())
          FD.Type.Values.push_back(V->STRING() ? unquote(V->STRING()->getText()) : V->getText());
        FD.Type.Optional = T->QUESTION() != nullptr;
        if (F->expr())
          FD.Default = expr(F->expr());
        S.Fields.push_back(std::move(FD));
      } else if (auto *RD = I->rangeDecl()) {
        if (RD->name().size() != 2 || !RD->expr())
          continue;
        S.Ranges.push_back({R(RD), RD->name(0)->getText(), RD->name(1)->getText(), expr(RD->expr())});
      } else if (auto *B = I->blockDecl()) {
        ast::BlockDecl BD;
        BD.Range = R(B);
        BD.Name = text(B->name());
        for (auto *PD : B->paramDecl())
          if (auto Prm = param(PD))
            BD.Params.push_back(std::move(*Prm));
        for (auto *U : B->useDecl())
          if (auto Us = use(U))
            BD.Uses.push_back(std::move(*Us));
        S.Blocks.push_back(std::move(BD));
      } else if (auto *PD = I->paramDecl()) {
        if (auto Prm = param(PD))
          S.Params.push_back(std::move(*Prm));
      } else if (auto *U = I->useDecl()) {
        if (auto Us = use(U))
          S.Uses.push_back(std::move(*Us));
      }
    }
    return S;
  }

  std::optional<ast::ParamDecl> param(P::ParamDeclContext *C) {
    if (!C->pattern() || !C->name())
      return std::nullopt;
    ast::ParamDecl PD;
    PD.Range = R(C);
    PD.Local = pattern(C->pattern());
    auto Es = C->expr();
    size_t NumDims = Es.size();
    if (C->WHEN()) {
      PD.When = expr(Es.back());
      --NumDims;
    }
    for (size_t I = 0; I < NumDims; ++I)
      PD.Shape.push_back(expr(Es[I]));
    PD.ShapeFromCheckpoint = C->DOTDOT() != nullptr;
    PD.Style = C->name()->getText();
    PD.StyleRange = R(C->name());
    for (auto *A : C->paramAttr()) {
      if (auto *TE = dynamic_cast<P::AttrTEContext *>(A)) {
        if (!TE->pattern())
          continue;
        PD.HasTE = true;
        PD.TE = pattern(TE->pattern());
      } else if (auto *DI = dynamic_cast<P::AttrDistContext *>(A)) {
        if (!DI->pattern())
          continue;
        PD.HasDist = true;
        PD.Dist = pattern(DI->pattern());
      } else if (auto *LD = dynamic_cast<P::AttrLocalDistContext *>(A)) {
        if (!LD->pattern())
          continue;
        PD.HasLocalDist = true;
        PD.LocalDist = pattern(LD->pattern());
      } else if (dynamic_cast<P::AttrExpertContext *>(A)) {
        PD.Expert = true;
      }
    }
    return PD;
  }

  std::optional<ast::UseDecl> use(P::UseDeclContext *C) {
    if (!C->name())
      return std::nullopt;
    ast::UseDecl U;
    U.Range = R(C);
    U.Block = C->name()->getText();
    U.BlockRange = R(C->name());
    if (C->pattern())
      U.At = pattern(C->pattern()); // none: the block's parameters at the root
    if (C->expr())
      U.When = expr(C->expr());
    return U;
  }

  // ---- expressions --------------------------------------------------------------
  std::shared_ptr<ast::Expr> make(ast::Expr::Kind K, llvm::SMRange Rg) {
    auto E = std::make_shared<ast::Expr>();
    E->K = K;
    E->Range = Rg;
    return E;
  }

  ast::ExprP binaryChain(const std::vector<ast::ExprP> &Operands, const std::vector<antlr4::Token *> &Ops) {
    if (Operands.empty())
      return nullptr;
    ast::ExprP Acc = Operands[0];
    for (size_t I = 1; I < Operands.size(); ++I) {
      if (!Acc || !Operands[I])
        return nullptr;
      auto E = make(ast::Expr::Binary, {Acc->Range.Start, Operands[I]->Range.End});
      E->Text = I - 1 < Ops.size() ? Ops[I - 1]->getText() : "?";
      E->Ops = {Acc, Operands[I]};
      Acc = E;
    }
    return Acc;
  }

  template <typename Ctx, typename F> std::vector<ast::ExprP> all(const std::vector<Ctx *> &Cs, F Fn) {
    std::vector<ast::ExprP> Out;
    for (auto *C : Cs)
      Out.push_back(C ? (this->*Fn)(C) : nullptr);
    return Out;
  }

  /// Tokens of one kind set that separate the operands of a chain context.
  std::vector<antlr4::Token *> separators(antlr4::ParserRuleContext *C, std::initializer_list<size_t> Types) {
    std::vector<antlr4::Token *> Out;
    for (auto *Ch : C->children)
      if (auto *T = dynamic_cast<antlr4::tree::TerminalNode *>(Ch))
        for (size_t Ty : Types)
          if (T->getSymbol()->getType() == Ty)
            Out.push_back(T->getSymbol());
    return Out;
  }

public:
  ast::ExprP expr(P::ExprContext *C) {
    if (!C || !C->cond)
      return nullptr;
    ast::ExprP Cond = coalesce(C->cond);
    if (!C->QUESTION())
      return Cond;
    ast::ExprP Then = expr(C->thenE), Else = expr(C->elseE);
    if (!Cond || !Then || !Else)
      return nullptr;
    auto E = make(ast::Expr::Ternary, R(C));
    E->Ops = {Cond, Then, Else};
    return E;
  }

private:
  ast::ExprP coalesce(P::CoalesceExprContext *C) {
    auto Ops = all(C->orExpr(), &ASTBuilder::orE);
    if (Ops.size() == 1)
      return Ops[0];
    for (auto &O : Ops)
      if (!O)
        return nullptr;
    auto E = make(ast::Expr::Coalesce, R(C));
    E->Text = "??";
    E->Ops = Ops;
    return E;
  }
  ast::ExprP orE(P::OrExprContext *C) {
    return binaryChain(all(C->andExpr(), &ASTBuilder::andE), separators(C, {P::OROR}));
  }
  ast::ExprP andE(P::AndExprContext *C) {
    return binaryChain(all(C->cmpExpr(), &ASTBuilder::cmpE), separators(C, {P::ANDAND}));
  }
  ast::ExprP cmpE(P::CmpExprContext *C) {
    return binaryChain(all(C->addExpr(), &ASTBuilder::addE), C->op ? std::vector<antlr4::Token *>{C->op} : std::vector<antlr4::Token *>{});
  }
  ast::ExprP addE(P::AddExprContext *C) { return binaryChain(all(C->mulExpr(), &ASTBuilder::mulE), C->op); }
  ast::ExprP mulE(P::MulExprContext *C) { return binaryChain(all(C->unaryExpr(), &ASTBuilder::unaryE), C->op); }
  ast::ExprP unaryE(P::UnaryExprContext *C) {
    if (C->primary())
      return primary(C->primary());
    ast::ExprP Sub = C->unaryExpr() ? unaryE(C->unaryExpr()) : nullptr;
    if (!Sub || !C->op)
      return nullptr;
    // Fold '-<number>' so that literals stay literals (shapes, defaults).
    if (C->op->getType() == P::MINUS && (Sub->K == ast::Expr::Int || Sub->K == ast::Expr::Float)) {
      auto E = std::make_shared<ast::Expr>(*Sub);
      E->Range = R(C);
      E->IntVal = -Sub->IntVal;
      E->FloatVal = -Sub->FloatVal;
      E->Text = "-" + Sub->Text;
      if (!Sub->LetUse.empty()) // '-x' of 'let x = 2;' is the literal '-2'
        E->LetUse = "-" + Sub->LetUse;
      return E;
    }
    auto E = make(ast::Expr::Unary, R(C));
    E->Text = C->op->getText();
    E->Ops = {Sub};
    return E;
  }

  ast::ExprP primary(P::PrimaryContext *C) {
    if (auto *I = dynamic_cast<P::LitIntContext *>(C)) {
      auto E = make(ast::Expr::Int, R(C));
      E->Text = I->getText();
      errno = 0;
      char *End = nullptr;
      E->IntVal = std::strtoll(E->Text.c_str(), &End, 10);
      if (errno == ERANGE)
        Ctx.Diags.emit(DiagId::BadNumber, E->Range, E->Text);
      return E;
    }
    if (auto *F = dynamic_cast<P::LitFloatContext *>(C)) {
      auto E = make(ast::Expr::Float, R(C));
      E->Text = F->getText();
      errno = 0;
      E->FloatVal = std::strtod(E->Text.c_str(), nullptr);
      if (errno == ERANGE)
        Ctx.Diags.emit(DiagId::BadNumber, E->Range, E->Text);
      return E;
    }
    if (auto *S = dynamic_cast<P::LitStringContext *>(C)) {
      auto E = make(ast::Expr::String, R(C));
      E->Text = unquote(S->getText());
      return E;
    }
    if (dynamic_cast<P::LitTrueContext *>(C) || dynamic_cast<P::LitFalseContext *>(C)) {
      auto E = make(ast::Expr::Bool, R(C));
      E->BoolVal = dynamic_cast<P::LitTrueContext *>(C) != nullptr;
      E->Text = E->BoolVal ? "true" : "false";
      return E;
    }
    if (dynamic_cast<P::LitNullContext *>(C)) {
      auto E = make(ast::Expr::Null, R(C));
      E->Text = "null";
      return E;
    }
    if (auto *H = dynamic_cast<P::RefHFContext *>(C)) {
      if (!H->hfPath())
        return nullptr;
      auto E = make(ast::Expr::HFPath, R(C));
      for (auto *N : H->hfPath()->name())
        E->Path.push_back(N->getText());
      if (E->Path.empty())
        return nullptr;
      return E;
    }
    if (auto *Call = dynamic_cast<P::CallContext *>(C)) {
      if (!Call->name())
        return nullptr;
      auto E = make(ast::Expr::Call, R(C));
      E->Text = Call->name()->getText();
      for (auto *A : Call->expr()) {
        auto Arg = expr(A);
        if (!Arg)
          return nullptr;
        E->Ops.push_back(Arg);
      }
      return E;
    }
    if (auto *N = dynamic_cast<P::RefNameContext *>(C)) {
      if (!N->name())
        return nullptr;
      std::string Name = N->name()->getText();
      if (auto It = Lets.find(Name);
          It != Lets.end() && std::find(LoopVars.begin(), LoopVars.end(), Name) == LoopVars.end())
        return letUse(It->second, Name, R(C));
      auto E = make(ast::Expr::Name, R(C));
      E->Text = Name;
      return E;
    }
    if (auto *L = dynamic_cast<P::ListContext *>(C)) {
      auto E = make(ast::Expr::List, R(C));
      for (auto *A : L->expr()) {
        auto Item = expr(A);
        if (!Item)
          return nullptr;
        E->Ops.push_back(Item);
      }
      return E;
    }
    if (auto *Pa = dynamic_cast<P::ParenContext *>(C))
      return expr(Pa->expr());
    return nullptr;
  }
};

} // namespace

std::unique_ptr<ast::File> bridgec::buildAST(ParseContext &Ctx, P::FileContext *Tree) {
  return ASTBuilder(Ctx).build(Tree);
}
