# bridge_add_mappings(TARGET <name> MAPPINGS <a.bridge>... [IMPORT_DIRS <dir>...] [FLAGS <flag>...])
#
# Builds executable <name>: bridge-run with the shipped mappings and the given
# .bridge files. Runs the installed bridgec on each file at build time (one
# <stem>.inc each, with a depfile for imports and --write-if-changed, as
# bridge_generate() does for the shipped ones); the shipped fragments
# (${BRIDGE_MAPPINGS_DIR}/common, e.g. gpt_decoder.bridge) are on the import
# path before IMPORT_DIRS. The registry is written for this executable: the
# shipped tables (${BRIDGE_TABLES_DIR}) in their order, then the given ones in
# the order of MAPPINGS; a model_type or architecture that two mappings claim
# goes to the first. Each mapping's name (`bridge NAME`) must differ from the
# shipped ones (`bridge-run list`).
#
# The converter module, libbridge_exec.so, is copied beside the executable:
# import, reshard and export open it there and it finds the mappings in the
# executable (which exports its symbols). Installing <name> elsewhere, install
# $<TARGET_FILE:Bridge::exec_module> beside it.
#
# bridgec runs from ${CMAKE_SOURCE_DIR}: paths in its diagnostics and in the
# tables are relative to it (absolute for files outside it).
set(_BRIDGE_PACKAGE_DIR ${CMAKE_CURRENT_LIST_DIR})

# A path relative to the source root where possible, as in this repository's
# build; absolute outside it.
function(_bridge_source_path abs out_var)
  file(RELATIVE_PATH rel ${CMAKE_SOURCE_DIR} ${abs})
  if(rel MATCHES "^\\.\\./")
    set(${out_var} ${abs} PARENT_SCOPE)
  else()
    set(${out_var} ${rel} PARENT_SCOPE)
  endif()
endfunction()

function(bridge_add_mappings)
  cmake_parse_arguments(PARSE_ARGV 0 ARG "" "TARGET" "MAPPINGS;IMPORT_DIRS;FLAGS")
  if(NOT ARG_TARGET OR NOT ARG_MAPPINGS)
    message(FATAL_ERROR "bridge_add_mappings: TARGET and MAPPINGS are required")
  endif()
  if(ARG_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "bridge_add_mappings: unknown arguments ${ARG_UNPARSED_ARGUMENTS}")
  endif()
  set(out_dir ${CMAKE_CURRENT_BINARY_DIR}/${ARG_TARGET}.gen)
  file(MAKE_DIRECTORY ${out_dir})

  set(import_flags -I ${BRIDGE_MAPPINGS_DIR}/common)
  foreach(dir IN LISTS ARG_IMPORT_DIRS)
    get_filename_component(dir ${dir} ABSOLUTE)
    _bridge_source_path(${dir} dir)
    list(APPEND import_flags -I ${dir})
  endforeach()

  set(includes)
  foreach(stem IN LISTS BRIDGE_SHIPPED_TABLES)
    string(APPEND includes "#include \"${stem}.inc\"\n")
  endforeach()
  set(outputs)
  set(stems)
  foreach(mapping IN LISTS ARG_MAPPINGS)
    get_filename_component(abs ${mapping} ABSOLUTE)
    get_filename_component(stem ${mapping} NAME_WE)
    if(stem IN_LIST stems)
      message(FATAL_ERROR "bridge_add_mappings: two mappings named ${stem}.bridge")
    endif()
    list(APPEND stems ${stem})
    _bridge_source_path(${abs} path)
    # Under a directory of its own: a file may share a shipped file's name.
    set(out ${out_dir}/user/${stem}.inc)
    add_custom_command(
      OUTPUT ${out}
      COMMAND Bridge::bridgec ${path} -o ${out} -d ${out}.d --write-if-changed ${import_flags} ${ARG_FLAGS}
      DEPENDS $<TARGET_FILE:Bridge::bridgec> ${abs}
      DEPFILE ${out}.d
      WORKING_DIRECTORY ${CMAKE_SOURCE_DIR}
      COMMENT "bridgec ${path}"
      VERBATIM)
    list(APPEND outputs ${out})
    string(APPEND includes "#include \"user/${stem}.inc\"\n")
  endforeach()
  file(MAKE_DIRECTORY ${out_dir}/user)
  set(BRIDGE_MAPPING_INCLUDES "${includes}")
  configure_file(${_BRIDGE_PACKAGE_DIR}/Registry.cpp.in ${out_dir}/Registry.cpp @ONLY)

  add_executable(${ARG_TARGET} ${out_dir}/Registry.cpp ${outputs})
  set_source_files_properties(${outputs} PROPERTIES GENERATED TRUE HEADER_FILE_ONLY TRUE)
  target_include_directories(${ARG_TARGET} PRIVATE ${out_dir} ${BRIDGE_TABLES_DIR})
  target_compile_features(${ARG_TARGET} PRIVATE cxx_std_17)
  # As bridge-run is linked in runtime/CMakeLists.txt: the whole of each
  # library, its symbols exported for the converter module.
  set(libs Bridge::run_main Bridge::runtime_host Bridge::runtime_core Bridge::recipes)
  target_link_libraries(${ARG_TARGET} PRIVATE ${libs} ${CMAKE_DL_LIBS})
  set(whole)
  foreach(lib IN LISTS libs)
    list(APPEND whole $<TARGET_FILE:${lib}>)
  endforeach()
  target_link_options(${ARG_TARGET} PRIVATE "LINKER:--whole-archive" ${whole} "LINKER:--no-whole-archive")
  set_target_properties(${ARG_TARGET} PROPERTIES ENABLE_EXPORTS ON)
  add_custom_command(TARGET ${ARG_TARGET} POST_BUILD
    COMMAND ${CMAKE_COMMAND} -E copy_if_different $<TARGET_FILE:Bridge::exec_module>
            $<TARGET_FILE_DIR:${ARG_TARGET}>/$<TARGET_FILE_NAME:Bridge::exec_module>
    VERBATIM)
endfunction()
