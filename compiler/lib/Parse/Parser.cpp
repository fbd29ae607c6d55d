//===- Parser.cpp - ANTLR front end: text to parse tree to AST ----------===//
//
// This file and its siblings in lib/Parse are the only ones that include
// ANTLR or generated headers. Syntax errors go to the DiagnosticEngine with
// ANTLR's default recovery, so every error in a file is reported.
//
//===----------------------------------------------------------------------===//
#include "ParseImpl.h"

#include "bridgec/Parse/Parser.h"

#include "llvm/ADT/StringExtras.h"
#include "llvm/Support/ConvertUTF.h"

using namespace bridgec;

namespace {
/// Limits on hostile input (docs/reliability.md). The largest shipped
/// mapping is 14 KB and nests 4 levels.
constexpr size_t MaxFileBytes = size_t(1) << 20;
constexpr unsigned MaxNesting = 64;
} // namespace

namespace {
/// Routes ANTLR syntax errors to the DiagnosticEngine as BR0101.
class SyntaxErrorListener : public antlr4::BaseErrorListener {
public:
  explicit SyntaxErrorListener(ParseContext &Ctx) : Ctx(Ctx) {}
  void syntaxError(antlr4::Recognizer *, antlr4::Token *Offending, size_t Line, size_t Col,
                   const std::string &Msg, std::exception_ptr) override {
    llvm::SMRange R;
    if (Offending && Offending->getType() != antlr4::Token::EOF)
      R = Ctx.tokenRange(Offending);
    else if (Offending)
      R = {Ctx.loc(Offending->getStartIndex()), Ctx.loc(Offending->getStartIndex())};
    else
      R = {Ctx.lineCol(Line, Col), Ctx.lineCol(Line, Col)};
    Ctx.Diags.emit(DiagId::SyntaxError, R, cleanMessage(Msg));
  }

private:
  // ANTLR spells EOF as '<EOF>' and lists token names; keep its text but say
  // "end of file" the way people read it.
  static std::string cleanMessage(std::string M) {
    size_t P;
    while ((P = M.find("<EOF>")) != std::string::npos)
      M.replace(P, 5, "end of file");
    return M;
  }
  ParseContext &Ctx;
};
} // namespace

ParseContext::ParseContext(unsigned BufferID, DiagnosticEngine &Diags)
    : Diags(Diags), BufferID(BufferID) {
  const llvm::MemoryBuffer *Buf = Diags.getSourceMgr().getMemoryBuffer(BufferID);
  Begin = Buf->getBufferStart();
  Size = Buf->getBufferSize();
  // ANTLR indexes code points; map them to bytes when the file is not ASCII.
  bool Ascii = true;
  for (size_t I = 0; I < Size; ++I)
    if (static_cast<unsigned char>(Begin[I]) >= 0x80) {
      Ascii = false;
      break;
    }
  if (!Ascii) {
    for (size_t I = 0; I < Size; ++I)
      if ((static_cast<unsigned char>(Begin[I]) & 0xC0) != 0x80)
        CodePointToByte.push_back(static_cast<uint32_t>(I));
    CodePointToByte.push_back(static_cast<uint32_t>(Size));
  }
}

llvm::SMLoc ParseContext::loc(size_t CodePoint) const {
  size_t Byte = CodePoint;
  if (!CodePointToByte.empty())
    Byte = CodePoint < CodePointToByte.size() ? CodePointToByte[CodePoint] : Size;
  if (Byte > Size)
    Byte = Size;
  return llvm::SMLoc::getFromPointer(Begin + Byte);
}

llvm::SMLoc ParseContext::lineCol(size_t Line, size_t Col) const {
  return Diags.getSourceMgr().FindLocForLineAndColumn(BufferID, Line, Col + 1);
}

llvm::SMRange ParseContext::tokenRange(antlr4::Token *T) const {
  return {loc(T->getStartIndex()), loc(T->getStopIndex() + 1)};
}

llvm::SMRange ParseContext::range(antlr4::ParserRuleContext *C) const {
  if (!C || !C->getStart())
    return {};
  antlr4::Token *Stop = C->getStop() ? C->getStop() : C->getStart();
  size_t End = Stop->getType() == antlr4::Token::EOF ? Stop->getStartIndex() : Stop->getStopIndex() + 1;
  if (Stop->getStopIndex() + 1 < C->getStart()->getStartIndex()) // empty rule after an error
    End = C->getStart()->getStartIndex();
  return {loc(C->getStart()->getStartIndex()), loc(End)};
}

std::unique_ptr<ast::File> bridgec::parseBuffer(unsigned BufferID, DiagnosticEngine &Diags) {
  ParseContext Ctx(BufferID, Diags);
  const llvm::MemoryBuffer *Buf = Diags.getSourceMgr().getMemoryBuffer(BufferID);
  if (Buf->getBufferSize() > MaxFileBytes) {
    // Reported where the limit is crossed; nothing of the file is parsed.
    llvm::SMLoc At = llvm::SMLoc::getFromPointer(Buf->getBufferStart() + MaxFileBytes);
    Diags.emit(DiagId::FileTooLarge, llvm::SMRange(At, At), std::to_string(Buf->getBufferSize()),
               std::to_string(MaxFileBytes));
    auto Empty = std::make_unique<ast::File>();
    Empty->Path = Buf->getBufferIdentifier().str();
    Empty->BufferID = BufferID;
    return Empty;
  }
  // ANTLR decodes the text as UTF-8 and throws on a malformed byte; the
  // file's first one is reported where it is, and nothing else is parsed.
  const auto *Begin = reinterpret_cast<const llvm::UTF8 *>(Buf->getBufferStart()), *Bad = Begin;
  if (!llvm::isLegalUTF8String(&Bad, reinterpret_cast<const llvm::UTF8 *>(Buf->getBufferEnd()))) {
    llvm::SMLoc At = llvm::SMLoc::getFromPointer(Buf->getBufferStart() + (Bad - Begin));
    Diags.emit(DiagId::InvalidUTF8, llvm::SMRange(At, At), llvm::utohexstr(*Bad, /*LowerCase=*/false, 2));
    auto Empty = std::make_unique<ast::File>();
    Empty->Path = Buf->getBufferIdentifier().str();
    Empty->BufferID = BufferID;
    return Empty;
  }
  antlr4::ANTLRInputStream Input(Buf->getBuffer().str());
  ::bridge::grammar::BridgeLexer Lexer(&Input);
  antlr4::CommonTokenStream Tokens(&Lexer);
  SyntaxErrorListener Listener(Ctx);
  Lexer.removeErrorListeners();
  Lexer.addErrorListener(&Listener);
  // The parser, the AST builder and Sema recurse once per level of nesting;
  // a hostile file of 20,000 '(' would overflow the stack. Every real
  // mapping nests a few levels, so past MaxNesting the file is refused
  // before it is parsed.
  Tokens.fill();
  {
    using L = ::bridge::grammar::BridgeLexer;
    unsigned Brackets = 0, Questions = 0, Unary = 0;
    for (antlr4::Token *T : Tokens.getTokens()) {
      size_t Type = T->getType();
      if (Type == L::LPAREN || Type == L::LBRACK || Type == L::LBRACE)
        ++Brackets;
      else if ((Type == L::RPAREN || Type == L::RBRACK || Type == L::RBRACE) && Brackets)
        --Brackets;
      if (Type == L::SEMI || Type == L::LBRACE || Type == L::RBRACE)
        Questions = 0; // a chain of 'a ? b : c ? ...' ends with its statement
      Questions += Type == L::QUESTION;
      Unary = (Type == L::MINUS || Type == L::BANG) ? Unary + 1 : 0;
      if (Brackets + Questions + Unary > MaxNesting) {
        Diags.emit(DiagId::NestedTooDeep, Ctx.tokenRange(T), std::to_string(MaxNesting));
        auto Empty = std::make_unique<ast::File>();
        Empty->Path = Buf->getBufferIdentifier().str();
        Empty->BufferID = BufferID;
        return Empty;
      }
    }
  }
  ::bridge::grammar::BridgeParser Parser(&Tokens);
  Parser.removeErrorListeners();
  Parser.addErrorListener(&Listener);
  ::bridge::grammar::BridgeParser::FileContext *Tree = Parser.file();
  Ctx.Tokens = &Tokens;
  auto File = buildAST(Ctx, Tree);
  for (antlr4::Token *T : Tokens.getTokens())
    if (T->getType() == ::bridge::grammar::BridgeLexer::LINE_COMMENT)
      File->Comments.push_back({Ctx.loc(T->getStartIndex()), T->getText()});
  File->Path = Buf->getBufferIdentifier().str();
  File->BufferID = BufferID;
  return File;
}
