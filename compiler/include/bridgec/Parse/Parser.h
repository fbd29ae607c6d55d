//===- Parser.h - .bridge text to AST ----------------------------*- C++ -*-===//
//
// The only entry to the ANTLR front end. Syntax errors are reported through
// the DiagnosticEngine (every error in the buffer, with recovery) and the
// returned tree holds whatever parsed.
//
//===----------------------------------------------------------------------===//
#ifndef BRIDGEC_PARSE_PARSER_H
#define BRIDGEC_PARSE_PARSER_H

#include "bridgec/AST/AST.h"
#include "bridgec/Basic/Diagnostic.h"

#include <memory>

namespace bridgec {

/// Parse buffer \p BufferID of the engine's SourceMgr.
std::unique_ptr<ast::File> parseBuffer(unsigned BufferID, DiagnosticEngine &Diags);

} // namespace bridgec

#endif
