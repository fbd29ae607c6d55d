//===- ExecModule.h - The converter module bridge-run opens on demand -----===//
//
// The commands that convert tensors (import, reshard, export) run on
// libtorch; the others (plan, config, list, verify, recipe, --help) need
// none of it. bridge-run is linked without libtorch and opens
// libbridge_exec.so, which holds the converter and libtorch's dependency,
// only for a command that converts: the others start in milliseconds.
//
//===----------------------------------------------------------------------===//
#ifndef BRIDGE_EXECMODULE_H
#define BRIDGE_EXECMODULE_H

#include "bridge/Convert.h"

#include <cstddef>

namespace bridge {

/// What the module gives bridge-run. The sizes guard against a module of
/// another build beside the executable.
struct ExecModule {
  unsigned Version;
  size_t ImportOptionsSize, ExportOptionsSize, SummarySize;
  GroupSummary (*ImportInGroup)(ImportOptions O);
  GroupSummary (*ReshardInGroup)(ImportOptions O, const std::string &FromDir);
  Summary (*Export)(const ExportOptions &O);
};

/// bridge-run's calls of the module's entry points (ExecLoader.cpp), which
/// open it on first use. Named apart from the module's own functions:
/// bridge-run exports its symbols (ENABLE_EXPORTS), and a module symbol of
/// the same name would bind to bridge-run's.
GroupSummary execImportInGroup(ImportOptions O);
GroupSummary execReshardInGroup(ImportOptions O, const std::string &FromDir);
Summary execExport(const ExportOptions &O);

constexpr unsigned kExecModuleVersion = 2;
/// The module's file name, looked for beside the bridge-run executable
/// (BRIDGE_EXEC_MODULE names another path).
constexpr const char *kExecModuleFile = "libbridge_exec.so";

} // namespace bridge

extern "C" const bridge::ExecModule *bridge_exec_module();

#endif
