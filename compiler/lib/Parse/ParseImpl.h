//===- ParseImpl.h - shared state of the ANTLR front end ---------*- C++ -*-===//
// Private to lib/Parse: the one place where ANTLR types meet ours.
#ifndef BRIDGEC_LIB_PARSE_PARSEIMPL_H
#define BRIDGEC_LIB_PARSE_PARSEIMPL_H

#pragma push_macro("EOF")
#undef EOF
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Woverloaded-virtual"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#endif
#include "antlr4-runtime.h"
#include "BridgeLexer.h"
#include "BridgeParser.h"
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
#pragma pop_macro("EOF")

#include "bridgec/AST/AST.h"
#include "bridgec/Basic/Diagnostic.h"

namespace bridgec {

struct ParseContext {
  ParseContext(unsigned BufferID, DiagnosticEngine &Diags);
  llvm::SMLoc loc(size_t CodePoint) const;
  llvm::SMLoc lineCol(size_t Line, size_t Col) const;
  llvm::SMRange tokenRange(antlr4::Token *T) const;
  llvm::SMRange range(antlr4::ParserRuleContext *C) const;

  DiagnosticEngine &Diags;
  unsigned BufferID;
  const char *Begin = nullptr;
  size_t Size = 0;
  std::vector<uint32_t> CodePointToByte;
  antlr4::CommonTokenStream *Tokens = nullptr;
};

std::unique_ptr<ast::File> buildAST(ParseContext &Ctx, ::bridge::grammar::BridgeParser::FileContext *Tree);

} // namespace bridgec

#endif
