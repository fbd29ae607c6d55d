//===- Error.h - the error every layer of the runtime throws ------*- C++ -*-===//
//
// Below io, config and exec: the file readers throw it without seeing the
// config machinery.
//
//===----------------------------------------------------------------------===//
#ifndef BRIDGE_ERROR_H
#define BRIDGE_ERROR_H

#include <stdexcept>

namespace bridge {

/// A failure with a message meant for users; already names the file/line.
class Error : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

} // namespace bridge

#endif
