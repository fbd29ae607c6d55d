//===- RegistryTest.cpp - the generated registry -------------------------===//
#include "bridge/Registry.h"

#include <doctest/doctest.h>

#include <set>
#include <string>

using namespace bridge;

TEST_CASE("every shipped family is registered once, by model_type and architecture") {
  std::set<std::string> ModelTypes;
  for (const RegistryEntry &E : allMappings()) {
    REQUIRE(E.Table);
    CHECK(E.Table->ModelTypes.Size >= 1);
    for (const char *M : E.Table->ModelTypes) {
      CHECK_MESSAGE(ModelTypes.insert(M).second, "model_type matched twice: " << M);
      CHECK(findMappingByModelType(M) == E.Table);
    }
    for (const char *A : E.Table->Architectures)
      CHECK(findMappingByArchitecture(A) == E.Table);
  }
  for (const char *Family : {"llama", "mistral", "qwen2", "qwen3"})
    CHECK_MESSAGE(findMappingByModelType(Family), Family);
  CHECK(findMappingByModelType("no_such_model") == nullptr);
}

TEST_CASE("rules point at schema parameters that exist") {
  for (const RegistryEntry &E : allMappings())
    for (const TensorRule &R : E.Table->Tensors) {
      REQUIRE(R.Params.Size >= 1);
      for (uint32_t P : R.Params)
        CHECK(P < schema().Params.Size);
      REQUIRE(R.Alternatives.Size >= 1);
      for (const Span<OpNode> &Nodes : R.Alternatives)
        CHECK(Nodes.Size >= 1);
    }
}
