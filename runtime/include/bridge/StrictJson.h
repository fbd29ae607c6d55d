//===- StrictJson.h - JSON that refuses duplicate keys -------------------===//
//
// JSON allows an object to name a key twice, and the last one silently wins;
// in a config.json or a safetensors header that hides a contradiction. Every
// JSON file a checkpoint holds is read through this.
//
//===----------------------------------------------------------------------===//
#ifndef BRIDGE_STRICTJSON_H
#define BRIDGE_STRICTJSON_H

#include <set>
#include <string>
#include <vector>

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

/// Parses \p Text as JsonT (nlohmann::json or ordered_json); the first key
/// any object names twice is put in \p Duplicate (empty when none). Throws
/// what JsonT::parse throws on malformed text. Python's NaN and Infinity
/// literals are read as strings (quotePythonFloatLiterals).
template <class JsonT> JsonT parseJsonNoDuplicates(const std::string &Text, std::string &Duplicate) {
  std::vector<std::set<std::string>> Keys;
  Duplicate.clear();
  auto Callback = [&](int, typename JsonT::parse_event_t Event, JsonT &Parsed) {
    if (Event == JsonT::parse_event_t::object_start)
      Keys.emplace_back();
    else if (Event == JsonT::parse_event_t::object_end)
      Keys.pop_back();
    else if (Event == JsonT::parse_event_t::key && !Keys.back().insert(Parsed.template get<std::string>()).second &&
             Duplicate.empty())
      Duplicate = Parsed.template get<std::string>();
    return true;
  };
  return JsonT::parse(quotePythonFloatLiterals(Text), Callback);
}

} // namespace bridge

#endif
