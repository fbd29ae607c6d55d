# bridge_generate(TARGET <name> MAPPINGS <a.bridge>... [IMPORT_DIRS <dir>...] [FLAGS <flag>...])
#
# Runs bridgec on each mapping at build time (one <stem>.inc each, with a
# depfile for imports and --write-if-changed) plus once for the schema, and
# creates STATIC library <name> holding the registry source that includes
# them. Consumers: target_link_libraries(app PRIVATE <name>).
# bridgec runs from the source root so paths in diagnostics and tables are
# relative to it (stable goldens).
set(BRIDGE_CMAKE_DIR ${CMAKE_CURRENT_LIST_DIR})

function(bridge_generate)
  cmake_parse_arguments(PARSE_ARGV 0 ARG "" "TARGET" "MAPPINGS;IMPORT_DIRS;FLAGS")
  if(NOT ARG_TARGET OR NOT ARG_MAPPINGS)
    message(FATAL_ERROR "bridge_generate: TARGET and MAPPINGS are required")
  endif()
  set(out_dir ${CMAKE_CURRENT_BINARY_DIR}/${ARG_TARGET}.gen)
  file(MAKE_DIRECTORY ${out_dir})
  set(import_flags)
  foreach(dir IN LISTS ARG_IMPORT_DIRS)
    get_filename_component(dir ${dir} ABSOLUTE)
    file(RELATIVE_PATH rel ${CMAKE_SOURCE_DIR} ${dir})
    list(APPEND import_flags -I ${rel})
  endforeach()

  set(schema_out ${out_dir}/Schema.inc)
  add_custom_command(
    OUTPUT ${schema_out}
    COMMAND bridgec --emit=schema -o ${schema_out} --write-if-changed
    DEPENDS bridgec $<TARGET_FILE:bridgec>
    WORKING_DIRECTORY ${CMAKE_SOURCE_DIR}
    COMMENT "bridgec --emit=schema"
    VERBATIM)

  set(outputs ${schema_out})
  set(includes)
  foreach(mapping IN LISTS ARG_MAPPINGS)
    get_filename_component(abs ${mapping} ABSOLUTE)
    get_filename_component(stem ${mapping} NAME_WE)
    file(RELATIVE_PATH rel ${CMAKE_SOURCE_DIR} ${abs})
    set(out ${out_dir}/${stem}.inc)
    add_custom_command(
      OUTPUT ${out}
      COMMAND bridgec ${rel} -o ${out} -d ${out}.d --write-if-changed ${import_flags} ${ARG_FLAGS}
      DEPENDS bridgec $<TARGET_FILE:bridgec> ${abs}
      DEPFILE ${out}.d
      WORKING_DIRECTORY ${CMAKE_SOURCE_DIR}
      COMMENT "bridgec ${rel}"
      VERBATIM)
    list(APPEND outputs ${out})
    string(APPEND includes "#include \"${stem}.inc\"\n")
  endforeach()
  set(BRIDGE_MAPPING_INCLUDES "${includes}")
  configure_file(${BRIDGE_CMAKE_DIR}/Registry.cpp.in ${out_dir}/Registry.cpp @ONLY)
  add_library(${ARG_TARGET} STATIC ${out_dir}/Registry.cpp ${outputs})
  set_source_files_properties(${outputs} PROPERTIES GENERATED TRUE HEADER_FILE_ONLY TRUE)
  target_include_directories(${ARG_TARGET} PRIVATE ${out_dir})
  target_link_libraries(${ARG_TARGET} PUBLIC bridge_tables_api)
  set_target_properties(${ARG_TARGET} PROPERTIES POSITION_INDEPENDENT_CODE ON)
  # For golden tests: where the generated files are.
  set_target_properties(${ARG_TARGET} PROPERTIES BRIDGE_GEN_DIR ${out_dir})
endfunction()
