//===- StrictJson.h - JSON that refuses duplicate keys -------------------===//
//
// JSON allows an object to name a key twice, and the last one silently wins;
// in a config.json or a safetensors header that hides a contradiction. Every
// JSON file a checkpoint holds is read through this.
//
//===----------------------------------------------------------------------===//
#ifndef BRIDGE_STRICTJSON_H
#define BRIDGE_STRICTJSON_H

#include <string>

namespace bridge {

/// Python's json module writes the floats JSON has no literal for as bare
/// NaN, Infinity and -Infinity, and transformers saves config.json with it
/// (Nemotron-H's time_step_limit is [0.0, Infinity]). Outside strings they
/// become the strings kPythonFloat + "NaN" (...): readable, an error wherever
/// a rule expects a number, and written back as the bare literal by
/// dumpPythonJson.
inline constexpr const char *kPythonFloat = "__python_float__:";

inline std::string quotePythonFloatLiterals(const std::string &Text) {
  std::string Out;
  Out.reserve(Text.size());
  bool InString = false;
  for (size_t I = 0; I < Text.size(); ++I) {
    char C = Text[I];
    if (InString) {
      Out += C;
      if (C == '\\' && I + 1 < Text.size())
        Out += Text[++I];
      else if (C == '"')
        InString = false;
      continue;
    }
    if (C == '"') {
      InString = true;
      Out += C;
      continue;
    }
    bool Matched = false;
    for (const char *Word : {"-Infinity", "Infinity", "NaN"}) {
      size_t N = std::char_traits<char>::length(Word);
      if (Text.compare(I, N, Word) == 0) {
        Out += '"';
        Out += kPythonFloat;
        Out += Word;
        Out += '"';
        I += N - 1;
        Matched = true;
        break;
      }
    }
    if (!Matched)
      Out += C;
  }
  return Out;
}

/// \p J as text (indented by \p Indent) with the Python float literals
/// quotePythonFloatLiterals read put back as they were: what transformers
/// reads back as the same floats.
template <class JsonT> std::string dumpPythonJson(const JsonT &J, int Indent) {
  std::string Text = J.dump(Indent);
  for (const char *Word : {"-Infinity", "Infinity", "NaN"}) {
    std::string Quoted = std::string("\"") + kPythonFloat + Word + "\"";
    for (size_t At = Text.find(Quoted); At != std::string::npos; At = Text.find(Quoted, At))
      Text.replace(At, Quoted.size(), Word);
  }
  return Text;
}

/// How deep arrays and objects may nest in any JSON file read: a config.json
/// is at most five levels deep; 10^5 levels overflowed the stack of the
/// recursive copy and dump code.
inline constexpr unsigned kMaxJsonDepth = 128;

/// The one JSON reader for every file the runtime reads (config.json,
/// safetensors headers and indexes, bridge.json, manifests, journals). Parses
/// \p Text as JsonT (nlohmann::json or ordered_json) in time and memory
/// linear in its size: a key named twice in one object, nesting deeper than
/// kMaxJsonDepth and malformed text are each an Error naming \p File and
/// \p What ("the header", "config.json"). Python's NaN and Infinity literals
/// are read as strings (quotePythonFloatLiterals).
template <class JsonT> JsonT parseJson(const std::string &Text, const std::string &File, const std::string &What);

} // namespace bridge

#endif
