//===- StrictJson.cpp - the one JSON reader --------------------------------===//
//
// nlohmann's own parser is iterative, but its DOM builders are not fit for
// hostile input: the callback builder (the only one that sees keys) scans
// the whole parent after each object ends, quadratic in an object's members
// (80,000 tensors in a safetensors header took 187 s), and ordered_json
// looks every inserted key up linearly. This builder takes the SAX events,
// keeps a hash set of each open object's keys, appends members without a
// lookup, and stops at kMaxJsonDepth.
//
//===----------------------------------------------------------------------===//
#include "bridge/StrictJson.h"

#include "bridge/Error.h"

#include <nlohmann/json.hpp>

#include <new>
#include <unordered_set>
#include <vector>

namespace bridge {
namespace {

template <class JsonT> class DomBuilder : public nlohmann::json_sax<JsonT> {
public:
  using Int = typename JsonT::number_integer_t;
  using UInt = typename JsonT::number_unsigned_t;
  using Float = typename JsonT::number_float_t;
  using String = typename JsonT::string_t;
  using Binary = typename JsonT::binary_t;

  JsonT Root;
  std::string Problem; ///< why parsing stopped, when the builder stopped it
  size_t Position = 0;
  std::string ParseError;

  bool null() override { return put(JsonT(nullptr)); }
  bool boolean(bool V) override { return put(JsonT(V)); }
  bool number_integer(Int V) override { return put(JsonT(V)); }
  bool number_unsigned(UInt V) override { return put(JsonT(V)); }
  bool number_float(Float V, const String &) override { return put(JsonT(V)); }
  bool string(String &V) override { return put(JsonT(std::move(V))); }
  bool binary(Binary &V) override { return put(JsonT(std::move(V))); }

  bool start_object(std::size_t) override { return open(JsonT::object()); }
  bool start_array(std::size_t) override { return open(JsonT::array()); }
  bool end_object() override { return close(); }
  bool end_array() override { return close(); }

  bool key(String &K) override {
    Frame &F = Stack.back();
    if (!F.Keys.insert(K).second) {
      Problem = "has the key '" + K + "' twice in one object; which one holds is unclear";
      return false;
    }
    F.PendingKey = std::move(K);
    return true;
  }

  bool parse_error(std::size_t Pos, const std::string &, const nlohmann::detail::exception &E) override {
    Position = Pos;
    ParseError = E.what();
    return false;
  }

private:
  struct Frame {
    JsonT *Value;
    std::unordered_set<String> Keys;
    String PendingKey;
  };
  std::vector<Frame> Stack;

  /// Where the next value goes: the root, the end of an array, or the
  /// pending key of an object (appended: the key was checked new).
  JsonT *slot() {
    if (Stack.empty())
      return &Root;
    JsonT &Parent = *Stack.back().Value;
    if (Parent.is_array()) {
      auto &A = Parent.template get_ref<typename JsonT::array_t &>();
      A.emplace_back();
      return &A.back();
    }
    auto &O = Parent.template get_ref<typename JsonT::object_t &>();
    return &appendMember(O, std::move(Stack.back().PendingKey));
  }

  /// std::map (nlohmann::json) inserts in log time; ordered_map is a vector
  /// whose own insert searches it first, so it is appended to as a vector.
  template <class Obj> static JsonT &appendMember(Obj &O, String &&K) {
    if constexpr (std::is_base_of_v<std::vector<typename Obj::value_type, typename Obj::allocator_type>, Obj>) {
      auto &V = static_cast<std::vector<typename Obj::value_type, typename Obj::allocator_type> &>(O);
      V.emplace_back(std::move(K), JsonT());
      return V.back().second;
    } else {
      return O.emplace(std::move(K), JsonT()).first->second;
    }
  }

  bool put(JsonT &&V) {
    *slot() = std::move(V);
    return true;
  }

  bool open(JsonT &&Empty) {
    if (Stack.size() >= kMaxJsonDepth) {
      Problem = "nests arrays and objects more than " + std::to_string(kMaxJsonDepth) + " levels deep";
      return false;
    }
    JsonT *Slot = slot();
    *Slot = std::move(Empty);
    Stack.push_back({Slot, {}, {}});
    return true;
  }

  bool close() {
    Stack.pop_back();
    return true;
  }
};

} // namespace

template <class JsonT> JsonT parseJson(const std::string &Text, const std::string &File, const std::string &What) {
  DomBuilder<JsonT> B;
  std::string Where = "error: " + File + ": " + What;
  try {
    std::string Quoted = quotePythonFloatLiterals(Text);
    bool OK = JsonT::sax_parse(Quoted, &B, nlohmann::json::input_format_t::json, /*strict=*/true);
    if (!B.Problem.empty())
      throw Error(Where + " " + B.Problem);
    if (!OK)
      throw Error(Where + " is not valid JSON: " +
                  (B.ParseError.empty() ? std::string("parsing stopped") : B.ParseError));
  } catch (const std::bad_alloc &) {
    throw Error(Where + " (" + std::to_string(Text.size()) + " bytes) does not fit in memory");
  } catch (const nlohmann::json::exception &E) {
    throw Error(Where + " is not valid JSON: " + E.what());
  }
  return std::move(B.Root);
}

template nlohmann::json parseJson<nlohmann::json>(const std::string &, const std::string &, const std::string &);
template nlohmann::ordered_json parseJson<nlohmann::ordered_json>(const std::string &, const std::string &,
                                                                  const std::string &);

} // namespace bridge
