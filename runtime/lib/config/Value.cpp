//===- Value.cpp - names of table enums for messages ---------------------===//
#include "bridge/Config.h"

namespace bridge {

const char *styleName(Style S) {
  switch (S) {
#define BRIDGE_STYLE(Id, Name, Doc)                                                                     \
  case Style::Id:                                                                                       \
    return Name;
#include "bridge/Styles.def"
  }
  return "?";
}

std::string rangeVar(const SchemaTable &S, std::string_view RangeName) {
  for (const RangeInfo &R : S.Ranges)
    if (RangeName == R.Name)
      return R.Var;
  return "";
}

std::string describe(const SourceLoc &L) {
  return std::string(L.File) + ":" + std::to_string(L.Line) + ":" + std::to_string(L.Col);
}

} // namespace bridge
