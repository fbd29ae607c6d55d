//===- ExecLoader.cpp - The converting commands, from the module ----------===//
//
// bridge-run's calls of the converting commands: each opens
// libbridge_exec.so (ExecModule.h) on first use and calls its entry point.
//
//===----------------------------------------------------------------------===//
#include "bridge/Error.h"
#include "bridge/ExecModule.h"

#include <dlfcn.h>
#include <limits.h>
#include <stdlib.h>
#include <string>
#include <unistd.h>

namespace bridge {
namespace {

std::string besideExecutable(const char *File) {
  char Self[PATH_MAX];
  ssize_t N = readlink("/proc/self/exe", Self, sizeof(Self) - 1);
  if (N <= 0)
    return File;
  std::string Path(Self, static_cast<size_t>(N));
  return Path.substr(0, Path.rfind('/') + 1) + File;
}

const ExecModule &module() {
  static const ExecModule *M = [] {
    const char *Override = std::getenv("BRIDGE_EXEC_MODULE");
    std::string Path = Override && *Override ? Override : besideExecutable(kExecModuleFile);
    // RTLD_GLOBAL: libtorch's own modules resolve against what it loads.
    void *Handle = dlopen(Path.c_str(), RTLD_NOW | RTLD_GLOBAL);
    if (!Handle)
      throw Error("error: cannot open bridge-run's converter module " + Path + " (it is built and installed beside "
                  "bridge-run; BRIDGE_EXEC_MODULE names another path): " + dlerror());
    auto *Get = reinterpret_cast<const ExecModule *(*)()>(dlsym(Handle, "bridge_exec_module"));
    const ExecModule *Got = Get ? Get() : nullptr;
    if (!Got || Got->Version != kExecModuleVersion || Got->ImportOptionsSize != sizeof(ImportOptions) ||
        Got->ExportOptionsSize != sizeof(ExportOptions) || Got->SummarySize != sizeof(Summary))
      throw Error("error: " + Path + " is not the converter module of this bridge-run (another build?)");
    return Got;
  }();
  return *M;
}

} // namespace

GroupSummary execImportInGroup(ImportOptions O) { return module().ImportInGroup(std::move(O)); }

GroupSummary execReshardInGroup(ImportOptions O, const std::string &FromDir) {
  return module().ReshardInGroup(std::move(O), FromDir);
}

Summary execExport(const ExportOptions &O) { return module().Export(O); }

} // namespace bridge
