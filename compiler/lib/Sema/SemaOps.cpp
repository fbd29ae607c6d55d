//===- SemaOps.cpp - rule sources: ops, transforms, quantization ------------===//
//
// A rule's source is postfix op nodes: HF tensor names, ops of
// runtime/include/bridge/Ops.def with their inputs and parameters, and '@'
// transforms of Transforms.def. A source that a 'quantized' declaration
// covers is read through its dequantization op, as if that were written.
//
//===----------------------------------------------------------------------===//
#include "SemaImpl.h"

#include "bridgec/AST/Print.h"

#include "llvm/ADT/StringExtras.h"

#include <memory>

using namespace bridgec;
using namespace bridgec::sema;
using bridge::ValueKind;
using llvm::SMRange;

namespace {

struct OpInfo {
  bridge::Op Id;
  const char *Name;
  unsigned MinIn, MaxIn;
  const char *Params;
  unsigned Ranks;
  bridge::Style Required;
};

const OpInfo Ops[] = {
#define BRIDGE_OP(Id, Name, MinIn, MaxIn, Params, Ranks, Sty, Inverse)                                                 \
  {bridge::Op::Id, Name, MinIn, MaxIn, Params, Ranks, bridge::Style::Sty},
#include "bridge/Ops.def"
};

struct TransformInfo {
  bridge::Transform Id;
  const char *Name;
  unsigned Inputs;
};
const TransformInfo Transforms[] = {
#define BRIDGE_TRANSFORM(Id, Name, Inputs, Doc) {bridge::Transform::Id, Name, Inputs},
#include "bridge/Transforms.def"
};

} // namespace

void Analyzer::declareQuantized(const ast::BridgeDecl &B) {
  static const std::pair<const char *, const char *> Schemes[] = {{"fp8_block", "dequant_fp8_block"},
                                                                  {"fp8", "dequant_fp8"}};
  for (const ast::QuantizedDecl &Q : B.Quantized) {
    const char *Op = nullptr;
    std::vector<std::string> Names;
    for (auto &[Name, DequantOp] : Schemes) {
      Names.push_back(Name);
      if (Q.Scheme == Name)
        Op = DequantOp;
    }
    if (!Op) {
      D.emit(DiagId::UnknownQuantScheme, Q.SchemeRange, Q.Scheme, didYouMean(Q.Scheme, Names));
      continue;
    }
    if (Q.Param != "scale") {
      D.emit(DiagId::QuantScaleParam, Q.ParamRange, Q.Param);
      continue;
    }
    for (auto &[Glob, Range] : Q.Globs) {
      auto Pat = llvm::GlobPattern::create(Glob);
      if (!Pat) {
        llvm::consumeError(Pat.takeError());
        D.emit(DiagId::OpParam, Range, Op,
               "its 'quantized' pattern \"" + Glob + "\" is not a glob ('*' any text, '?' one character)");
        continue;
      }
      Quantized.push_back({Glob, std::move(*Pat), Op, Q.Suffix, Range, Q.Range});
    }
  }
}

/// The declared quantization that reads HF source \p P, if any.
Analyzer::QuantizedGlob *Analyzer::quantizedFor(const model::Pattern &P) {
  if (InDequant || Quantized.empty())
    return nullptr;
  std::string Name = P.str();
  for (QuantizedGlob &G : Quantized)
    if (G.Pattern.match(Name))
      return &G;
  return nullptr;
}

/// \p P as a pattern of the AST (captures keep their expressions), so a
/// dequantization op built around it goes through buildSource as a written
/// one does.
ast::Pattern Analyzer::astPattern(const model::Pattern &P, SMRange Range, const std::string &Suffix) {
  ast::Pattern Out;
  Out.Range = Range;
  for (const model::Pattern::Piece &Pc : P.Pieces) {
    ast::PatternPiece A;
    A.Range = Range;
    if (Pc.E) {
      A.K = ast::PatternPiece::Capture;
      A.E = Pc.E;
    } else {
      A.K = ast::PatternPiece::Literal;
      A.Text = Pc.Literal;
    }
    Out.Pieces.push_back(std::move(A));
  }
  if (!Suffix.empty()) {
    if (Out.Pieces.empty() || Out.Pieces.back().K != ast::PatternPiece::Literal) {
      ast::PatternPiece A;
      A.K = ast::PatternPiece::Literal;
      A.Range = Range;
      Out.Pieces.push_back(std::move(A));
    }
    Out.Pieces.back().Text += Suffix;
  }
  return Out;
}

/// Builds the postfix op nodes of \p Src; returns how many tensors it pushes.
unsigned Analyzer::buildSource(const ast::Source &Src, Scope &Sc, std::vector<model::OpNode> &Out,
                               std::set<std::string> &Vars, bool &OK) {
  if (Src.K == ast::Source::PatternRef) {
    auto Pats = expand(Src.Pat, Sc);
    for (auto &P : Pats) {
      if (QuantizedGlob *Q = Src.OptionalInput ? nullptr : quantizedFor(P)) {
        // As if 'OP(P, P<suffix>?)' were written here.
        Q->Used = true;
        ast::Source Op;
        Op.K = ast::Source::Op;
        Op.Range = Op.OpNameRange = Src.Range;
        Op.OpName = Q->Op;
        for (bool Scale : {false, true}) {
          auto In = std::make_shared<ast::Source>();
          In->K = ast::Source::PatternRef;
          In->Range = Src.Range;
          In->Pat = astPattern(P, Src.Pat.Range, Scale ? Q->Suffix : "");
          In->OptionalInput = Scale;
          ast::OpArg A;
          A.Range = Src.Range;
          A.Src = In;
          Op.Args.push_back(std::move(A));
        }
        buildSource(Op, Sc, Out, Vars, OK);
        continue;
      }
      model::OpNode N;
      N.IsSource = true;
      N.OptionalInput = Src.OptionalInput;
      N.Source = P;
      N.Loc = Src.Range;
      for (auto &Pc : P.Pieces)
        if (Pc.E)
          collectVars(*Pc.E, Sc, Vars);
      Out.push_back(std::move(N));
    }
    return Pats.size();
  }
  model::OpNode N;
  N.Loc = Src.Range;
  N.Name = Src.OpName;
  // As written, so that messages name transforms with their '@'.
  const std::string OpSpelling = (Src.Escape ? "@" : "") + Src.OpName;
  unsigned MinIn = 0, MaxIn = 0;
  const char *ParamSpec = "";
  if (Src.Escape) {
    const TransformInfo *T = nullptr;
    std::vector<std::string> Names;
    for (auto &I : Transforms) {
      Names.push_back(I.Name);
      if (Src.OpName == I.Name)
        T = &I;
    }
    if (!T) {
      D.emit(DiagId::UnknownTransform, Src.OpNameRange, Src.OpName, didYouMean(Src.OpName, Names));
      OK = false;
      return 1;
    }
    N.Kind = bridge::Op::Transform;
    N.Custom = T->Id;
    MinIn = MaxIn = T->Inputs;
  } else {
    const OpInfo *Info = nullptr;
    std::vector<std::string> Names;
    for (auto &I : Ops) {
      if (I.Id == bridge::Op::Transform)
        continue;
      Names.push_back(I.Name);
      if (Src.OpName == I.Name)
        Info = &I;
    }
    if (!Info) {
      D.emit(DiagId::UnknownOp, Src.OpNameRange, Src.OpName, didYouMean(Src.OpName, Names));
      OK = false;
      return 1;
    }
    N.Kind = Info->Id;
    MinIn = Info->MinIn;
    MaxIn = Info->MaxIn;
    ParamSpec = Info->Params;
  }
  unsigned Inputs = 0;
  std::vector<const ast::OpArg *> Named;
  bool FirstInput = true;
  for (const ast::OpArg &A : Src.Args) {
    if (A.Src && A.Src->OptionalInput && FirstInput) {
      D.emit(DiagId::OpParam, A.Src->Range, OpSpelling,
             "its first input cannot be optional: it is what passes through when an optional input is absent");
      OK = false;
    }
    if (A.Src)
      FirstInput = false;
    if (A.Src) {
      // A dequantization op's inputs are read as written, never again
      // through a declared quantization.
      bool Was = InDequant;
      InDequant |= N.Kind == bridge::Op::DequantFP8Block || N.Kind == bridge::Op::DequantFP8Tensor ||
                   N.Kind == bridge::Op::DequantMXFP4;
      Inputs += buildSource(*A.Src, Sc, Out, Vars, OK);
      InDequant = Was;
    } else {
      Named.push_back(&A);
    }
  }
  if (Inputs < MinIn || Inputs > MaxIn) {
    D.emit(DiagId::OpArity, Src.OpNameRange, OpSpelling,
           MinIn == MaxIn ? std::to_string(MinIn) : std::to_string(MinIn) + "-" + std::to_string(MaxIn), Inputs);
    OK = false;
  }
  N.NumInputs = Inputs;
  // Parameters: 'name:type' or 'name:type=default', comma-separated.
  struct Spec {
    std::string Name, Type, Default;
  };
  std::vector<Spec> Specs;
  for (llvm::StringRef Item : llvm::split(llvm::StringRef(ParamSpec), ',')) {
    if (Item.empty())
      continue;
    auto [NameType, Default] = Item.split('=');
    auto [Name, Type] = NameType.split(':');
    Specs.push_back({Name.str(), Type.str(), Default.str()});
  }
  std::set<std::string> Seen;
  for (const ast::OpArg *A : Named) {
    const Spec *Sp = nullptr;
    std::vector<std::string> Names;
    for (auto &X : Specs) {
      Names.push_back(X.Name);
      if (X.Name == A->Param)
        Sp = &X;
    }
    if (!Sp) {
      D.emit(DiagId::OpParam, A->ParamRange, OpSpelling,
             "no parameter '" + A->Param + "'" + didYouMean(A->Param, Names) +
                 (Names.empty() ? " (it takes none)" : " (parameters: " + llvm::join(Names, ", ") + ")"));
      OK = false;
      continue;
    }
    if (!Seen.insert(A->Param).second) {
      D.emit(DiagId::OpParam, A->ParamRange, OpSpelling, "parameter '" + A->Param + "' is given twice; keep one");
      OK = false;
      continue;
    }
    Ty T = check(*A->Value, Sc);
    collectVars(*A->Value, Sc, Vars);
    bool Fits = T.K == ValueKind::Any && !T.Null;
    if (Sp->Type == "int")
      Fits |= T.K == ValueKind::Int;
    else if (Sp->Type == "number")
      Fits |= isNumeric(T.K);
    else if (Sp->Type == "string")
      Fits |= T.K == ValueKind::String;
    else if (Sp->Type == "int_list")
      Fits |= T.K == ValueKind::IntList;
    if (!Fits) {
      D.emit(DiagId::TypeMismatch, A->Value->Range, "the value", T.str(), "parameter '" + A->Param + "'", Sp->Type);
      OK = false;
    }
    N.Params.push_back({A->Param, A->Value});
  }
  for (auto &Sp : Specs) {
    if (Seen.count(Sp.Name))
      continue;
    if (Sp.Default.empty()) {
      D.emit(DiagId::OpParam, Src.OpNameRange, OpSpelling, "it needs parameter '" + Sp.Name + "' (" + Sp.Type + ")");
      OK = false;
      continue;
    }
    auto E = std::make_shared<ast::Expr>();
    E->K = ast::Expr::Int;
    E->IntVal = std::stoll(Sp.Default);
    E->Text = Sp.Default;
    E->Range = Src.OpNameRange;
    N.Params.push_back({Sp.Name, E});
  }
  Out.push_back(std::move(N));
  return 1;
}

/// Whether the op at the root of each source of \p TR produces a tensor of
/// the rank and parallel style that schema parameter \p P (or another
/// declaration of the same name) has.
bool Analyzer::opsFitTarget(const model::TensorRule &TR, const model::Param &P, const std::string &Target) {
  for (const std::vector<model::OpNode> &Nodes : TR.Alternatives) {
    const model::OpNode &Root = Nodes.back();
    if (!Root.IsSource && Root.Kind != bridge::Op::Transform) {
      const OpInfo *Info = nullptr;
      for (auto &I : Ops)
        if (I.Id == Root.Kind)
          Info = &I;
      unsigned Rank = P.Shape.size();
      bool RankFits = !Info->Ranks, StyleFits = Info->Required == bridge::Style::Any;
      for (unsigned C : TR.Params) {
        RankFits |= (Info->Ranks >> S.Params[C].Shape.size()) & 1u;
        StyleFits |= S.Params[C].ParallelStyle == Info->Required;
      }
      if (!RankFits) {
        std::vector<std::string> Rs;
        for (unsigned K = 0; K < 8; ++K)
          if (Info->Ranks & (1u << K))
            Rs.push_back(std::to_string(K) + "-D");
        D.emit(DiagId::ShapeMismatch, Root.Loc, Root.Name, llvm::join(Rs, " or "), Target, Rank);
        D.note(DiagId::NoteSchemaHere, P.Loc);
        return false;
      }
      if (!StyleFits) {
        D.emit(DiagId::OpNeedsStyle, Root.Loc, Root.Name, styleName(Info->Required), Target,
               styleName(P.ParallelStyle));
        D.note(DiagId::NoteSchemaHere, P.Loc);
        return false;
      }
    }
  }
  return true;
}
