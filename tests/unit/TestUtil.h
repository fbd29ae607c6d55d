//===- TestUtil.h - what the unit tests share ----------------------------===//
#ifndef BRIDGE_TESTS_UNIT_TESTUTIL_H
#define BRIDGE_TESTS_UNIT_TESTUTIL_H

#include "bridge/Error.h"

#include <functional>
#include <string>

namespace bridge::test {

/// The message of the bridge::Error \p F throws, or "" when it throws none.
inline std::string errorOf(const std::function<void()> &F) {
  try {
    F();
  } catch (const Error &E) {
    return E.what();
  }
  return "";
}

} // namespace bridge::test

#endif
