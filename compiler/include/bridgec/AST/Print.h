//===- Print.h - canonical text of AST pieces ---------------------*- C++ -*-===//
#ifndef BRIDGEC_AST_PRINT_H
#define BRIDGEC_AST_PRINT_H

#include "bridgec/AST/AST.h"

#include <map>
#include <string>

namespace bridgec::ast {

/// Canonical spelling of an expression, with the fewest parentheses that
/// keep its meaning. \p Rename, when given, respells names (used to compare
/// rules whose loops name their variables differently). A use of a 'let'
/// prints as its expression, or, with \p AsWritten (the formatter), as the
/// name.
std::string print(const Expr &E, const std::map<std::string, std::string> *Rename = nullptr,
                  bool AsWritten = false);
/// Canonical spelling of a tensor-name pattern.
std::string print(const Pattern &P, const std::map<std::string, std::string> *Rename = nullptr,
                  bool AsWritten = false);
/// A string literal with quotes and escapes.
std::string quote(const std::string &S);

} // namespace bridgec::ast

#endif
