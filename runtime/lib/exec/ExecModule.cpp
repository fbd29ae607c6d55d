//===- ExecModule.cpp - The converter's entry points for bridge-run -------===//
#include "bridge/ExecModule.h"

extern "C" __attribute__((visibility("default"))) const bridge::ExecModule *bridge_exec_module() {
  static const bridge::ExecModule M{bridge::kExecModuleVersion,
                                    sizeof(bridge::ImportOptions),
                                    sizeof(bridge::ExportOptions),
                                    sizeof(bridge::Summary),
                                    &bridge::runImportInGroup,
                                    &bridge::runReshardInGroup,
                                    &bridge::runExport};
  return &M;
}
