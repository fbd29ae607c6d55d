//===- Registry.h - lookup of the generated mapping tables --------*- C++ -*-===//
// Defined by the registry source that bridge_generate() writes; no static
// constructors are involved.
#ifndef BRIDGE_REGISTRY_H
#define BRIDGE_REGISTRY_H

#include "bridge/Table.h"

#include <string_view>

namespace bridge {

/// The Megatron-side schema the tables were compiled against.
const SchemaTable &schema();
/// Every compiled mapping, in the order given to bridge_generate().
Span<RegistryEntry> allMappings();
/// The mapping that serves an HF model_type, or null.
const MappingTable *findMappingByModelType(std::string_view ModelType);
/// The mapping that serves an HF architecture name, or null.
const MappingTable *findMappingByArchitecture(std::string_view Architecture);

} // namespace bridge

#endif
