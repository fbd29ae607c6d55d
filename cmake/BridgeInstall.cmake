# cmake --install: the tools and a CMake package for mappings kept outside
# this repository (docs/onboarding.md, "Mappings outside this repository").
#
#   bin/                       bridgec, bridge-run, libbridge_exec.so (the
#                              converter module, beside bridge-run)
#   include/bridge/            the runtime's public headers
#   lib/                       the static libraries bridge-run is made of:
#                              runtime_core, runtime_host, recipes, mappings
#                              (the shipped registry), run_main (main)
#   lib/cmake/Bridge/          BridgeConfig.cmake, BridgeTargets.cmake,
#                              BridgeMappings.cmake (bridge_add_mappings())
#   share/bridge/schema/       the Megatron-side schema bridgec embeds
#   share/bridge/mappings/     the shipped .bridge files and common/ fragments,
#                              for `import "gpt_decoder.bridge";`
#   share/bridge/tables/       the shipped mappings' generated tables
#                              (Schema.inc, <stem>.inc), compiled again into
#                              each executable bridge_add_mappings() links
include(CMakePackageConfigHelpers)

set(BRIDGE_INSTALL_CMAKEDIR ${CMAKE_INSTALL_LIBDIR}/cmake/Bridge)
set(BRIDGE_INSTALL_DATADIR ${CMAKE_INSTALL_DATADIR}/bridge)

# Exported names: Bridge::<name>.
set_target_properties(bridge_tables_api PROPERTIES EXPORT_NAME tables_api)
set_target_properties(bridge_runtime_core PROPERTIES EXPORT_NAME runtime_core)
set_target_properties(bridge_runtime_host PROPERTIES EXPORT_NAME runtime_host)
set_target_properties(bridge_recipes PROPERTIES EXPORT_NAME recipes)
set_target_properties(bridge_mappings PROPERTIES EXPORT_NAME mappings)
set_target_properties(bridge_run_main PROPERTIES EXPORT_NAME run_main)
set_target_properties(bridge_exec PROPERTIES EXPORT_NAME exec_module
  # libtorch stays where the build found it (pip's torch/lib).
  INSTALL_RPATH_USE_LINK_PATH TRUE)

install(TARGETS bridge_tables_api bridge_runtime_core bridge_runtime_host bridge_recipes bridge_mappings
                bridge_run_main
  EXPORT BridgeTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
# The module is looked for beside the executable (bridge/ExecModule.h).
install(TARGETS bridge_exec EXPORT BridgeTargets LIBRARY DESTINATION ${CMAKE_INSTALL_BINDIR})
install(TARGETS bridge-run RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
get_target_property(bridgec_imported bridgec IMPORTED)
if(bridgec_imported)
  install(PROGRAMS ${BRIDGEC_EXECUTABLE} DESTINATION ${CMAKE_INSTALL_BINDIR} RENAME bridgec)
else()
  install(TARGETS bridgec RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
endif()

install(DIRECTORY ${CMAKE_SOURCE_DIR}/runtime/include/bridge DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY ${CMAKE_SOURCE_DIR}/compiler/schema/ DESTINATION ${BRIDGE_INSTALL_DATADIR}/schema
  FILES_MATCHING PATTERN "*.bridge")
install(DIRECTORY ${CMAKE_SOURCE_DIR}/mappings/ DESTINATION ${BRIDGE_INSTALL_DATADIR}/mappings
  FILES_MATCHING PATTERN "*.bridge")
get_target_property(bridge_gen_dir bridge_mappings BRIDGE_GEN_DIR)
install(DIRECTORY ${bridge_gen_dir}/ DESTINATION ${BRIDGE_INSTALL_DATADIR}/tables FILES_MATCHING PATTERN "*.inc")

install(EXPORT BridgeTargets NAMESPACE Bridge:: DESTINATION ${BRIDGE_INSTALL_CMAKEDIR})
# The shipped mappings in registry order, for the registries
# bridge_add_mappings() writes.
set(BRIDGE_SHIPPED_TABLES)
foreach(mapping IN LISTS BRIDGE_SHIPPED_MAPPINGS)
  get_filename_component(stem ${mapping} NAME_WE)
  list(APPEND BRIDGE_SHIPPED_TABLES ${stem})
endforeach()
set(BRIDGE_INSTALL_BINDIR ${CMAKE_INSTALL_BINDIR})
configure_package_config_file(${CMAKE_CURRENT_LIST_DIR}/BridgeConfig.cmake.in
  ${CMAKE_BINARY_DIR}/cmake/BridgeConfig.cmake
  INSTALL_DESTINATION ${BRIDGE_INSTALL_CMAKEDIR}
  PATH_VARS BRIDGE_INSTALL_BINDIR BRIDGE_INSTALL_DATADIR)
write_basic_package_version_file(${CMAKE_BINARY_DIR}/cmake/BridgeConfigVersion.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_BINARY_DIR}/cmake/BridgeConfig.cmake ${CMAKE_BINARY_DIR}/cmake/BridgeConfigVersion.cmake
              ${CMAKE_CURRENT_LIST_DIR}/BridgeMappings.cmake ${CMAKE_SOURCE_DIR}/compiler/cmake/Registry.cpp.in
  DESTINATION ${BRIDGE_INSTALL_CMAKEDIR})
