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

/// Parses \p Text as JsonT (nlohmann::json or ordered_json); the first key
/// any object names twice is put in \p Duplicate (empty when none). Throws
/// what JsonT::parse throws on malformed text.
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
  return JsonT::parse(Text, Callback);
}

} // namespace bridge

#endif
