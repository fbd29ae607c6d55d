//===- Sidecar.cpp - bridge.json checked field by field ---------------------===//
//
// bridge.json is input like any other: export writes the files it names and
// sizes tensors by its shapes, so every field is checked for its type and
// range before any of it is used.
//
//===----------------------------------------------------------------------===//
#include "bridge/Sidecar.h"

#include "bridge/DType.h"
#include "bridge/Error.h"
#include "bridge/Files.h"
#include "bridge/Manifest.h" // jsonKind

namespace bridge {

namespace {
[[noreturn]] void badField(const std::string &Path, const std::string &Field, const std::string &What) {
  throw Error("error: " + Path + ": " + Field + " " + What);
}
/// \p J[Key] when present: of the kind \p Is tests, else an error.
/// \p In is where \p J lies in the file ("hf_tensors['x'].").
const Json *optionalField(const std::string &Path, const Json &J, const char *Key, bool (Json::*Is)() const noexcept,
                          const char *Want, const std::string &In = "") {
  auto It = J.find(Key);
  if (It == J.end())
    return nullptr;
  if (!((*It).*Is)())
    badField(Path, In + Key, "is " + jsonKind(*It) + ", not " + Want);
  return &*It;
}
const Json &requiredField(const std::string &Path, const Json &J, const char *Key, bool (Json::*Is)() const noexcept,
                          const char *Want, const std::string &In = "") {
  const Json *F = optionalField(Path, J, Key, Is, Want, In);
  if (!F)
    badField(Path, In + Key, "is missing");
  return *F;
}
} // namespace

void checkSidecar(const Json &Side, const std::string &Path) {
  if (!Side.is_object())
    throw Error("error: " + Path + " is " + jsonKind(Side) + ", not an object");
  requiredField(Path, Side, "mapping", &Json::is_string, "a string");
  requiredField(Path, Side, "megatron_config", &Json::is_object, "an object");
  requiredField(Path, Side, "hf_config", &Json::is_object, "an object");
  optionalField(Path, Side, "hf_sharded", &Json::is_boolean, "a boolean");
  optionalField(Path, Side, "layer_spec", &Json::is_string, "a string");
  if (const Json *F = optionalField(Path, Side, "checkpoint_format", &Json::is_string, "a string"))
    if (*F != "torch_dist" && *F != "torch")
      badField(Path, "checkpoint_format", "is " + F->dump() + ", not \"torch_dist\" or \"torch\"");
  if (const Json *A = optionalField(Path, Side, "alternatives", &Json::is_object, "an object"))
    for (auto It = A->begin(); It != A->end(); ++It)
      if (!It->is_number_unsigned())
        badField(Path, "alternatives['" + It.key() + "']", "is " + jsonKind(*It) + ", not a source layout number");
  if (const Json *L = optionalField(Path, Side, "layout", &Json::is_object, "an object"))
    for (auto It = L->begin(); It != L->end(); ++It)
      if (!It->is_number_unsigned() || It->get<uint64_t>() > (1u << 20))
        badField(Path, "layout." + It.key(), "is " + It->dump() + ", not a size from 0 to 2^20");
  if (const Json *T = optionalField(Path, Side, "hf_tensors", &Json::is_object, "an object"))
    for (auto It = T->begin(); It != T->end(); ++It) {
      std::string Field = "hf_tensors['" + It.key() + "']";
      if (!It->is_object())
        badField(Path, Field, "is " + jsonKind(*It) + ", not an object");
      const Json &File = requiredField(Path, *It, "file", &Json::is_string, "a string", Field + ".");
      const std::string &Name = File.get_ref<const std::string &>();
      // export writes this file: it must be one of the export's own shards.
      if (!files::isPlainName(Name) || Name.size() <= 12 || Name.compare(Name.size() - 12, 12, ".safetensors") != 0)
        badField(Path, Field + ".file", "is '" + Name + "', not a plain .safetensors file name");
      const Json &Type = requiredField(Path, *It, "dtype", &Json::is_string, "a string", Field + ".");
      if (!dtypeFromSafetensors(Type.get<std::string>()))
        badField(Path, Field + ".dtype", "is " + Type.dump() + ", not a safetensors dtype");
      const Json &Shape = requiredField(Path, *It, "shape", &Json::is_array, "an array", Field + ".");
      __int128 Numel = 1;
      for (const Json &D : Shape) {
        if (!D.is_number_unsigned() || D.get<uint64_t>() > (uint64_t(1) << 62))
          badField(Path, Field + ".shape", "has the dimension " + D.dump() + ", not a size");
        Numel *= D.get<uint64_t>();
        if (Numel > (__int128(1) << 60))
          badField(Path, Field + ".shape", "is " + Shape.dump() + ", impossibly large");
      }
    }
}

} // namespace bridge
