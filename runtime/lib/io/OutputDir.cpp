//===- OutputDir.cpp - checks on --out and the final rename -----------------===//
#include "bridge/OutputDir.h"

#include "bridge/Error.h"
#include "bridge/Files.h"
#include "bridge/StrictJson.h"

#include <nlohmann/json.hpp>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace bridge {
namespace {

std::string currentDirectory() {
  char Buf[4096];
  return ::getcwd(Buf, sizeof Buf) ? std::string(Buf) : std::string("/");
}

/// Whether \p Inner is \p Outer or lies below it (both resolved).
bool within(const std::string &Inner, const std::string &Outer) {
  if (Inner == Outer || Outer == "/")
    return true;
  return Inner.size() > Outer.size() && Inner.compare(0, Outer.size(), Outer) == 0 && Inner[Outer.size()] == '/';
}

/// rename(2) that fails with EEXIST instead of replacing \p To. Falls back
/// to a check and a plain rename where the file system has no
/// RENAME_NOREPLACE (rename(2) still refuses a non-empty directory).
int renameNoReplace(const std::string &From, const std::string &To) {
#ifdef RENAME_NOREPLACE
  if (::renameat2(AT_FDCWD, From.c_str(), AT_FDCWD, To.c_str(), RENAME_NOREPLACE) == 0)
    return 0;
  if (errno != EINVAL && errno != ENOSYS)
    return -1;
#endif
  struct stat St;
  if (::lstat(To.c_str(), &St) == 0) {
    errno = EEXIST;
    return -1;
  }
  return ::rename(From.c_str(), To.c_str());
}

} // namespace

std::string resolvedPath(const std::string &Path) {
  std::string Abs = !Path.empty() && Path[0] == '/' ? Path : currentDirectory() + "/" + Path;
  // Fold '.', '..' and repeated slashes lexically, then resolve the longest
  // prefix that exists.
  std::vector<std::string> Parts;
  size_t I = 0;
  while (I <= Abs.size()) {
    size_t J = Abs.find('/', I);
    if (J == std::string::npos)
      J = Abs.size();
    std::string P = Abs.substr(I, J - I);
    if (P == "..") {
      if (!Parts.empty())
        Parts.pop_back();
    } else if (!P.empty() && P != ".") {
      Parts.push_back(P);
    }
    I = J + 1;
  }
  for (size_t Keep = Parts.size() + 1; Keep-- > 0;) {
    std::string Prefix;
    for (size_t K = 0; K < Keep; ++K)
      Prefix += "/" + Parts[K];
    std::string Real = files::realPath(Prefix.empty() ? "/" : Prefix);
    if (Real.empty())
      continue;
    for (size_t K = Keep; K < Parts.size(); ++K)
      Real += (Real == "/" ? "" : "/") + Parts[K];
    return Real;
  }
  return Abs;
}

bool looksLikeOutput(const std::string &Dir) {
  if (!files::isDirectory(Dir))
    return false;
  std::vector<std::string> Names = files::list(Dir);
  if (Names.empty())
    return true;
  struct stat St;
  if (::lstat(files::join(Dir, "latest_checkpointed_iteration.txt").c_str(), &St) == 0 && S_ISREG(St.st_mode))
    return true;
  std::string Manifest = files::join(Dir, "manifest.json");
  // An export: an HF checkpoint, or an HF PEFT adapter (--adapter-only).
  if (::lstat(Manifest.c_str(), &St) != 0 || !S_ISREG(St.st_mode) ||
      (::lstat(files::join(Dir, "config.json").c_str(), &St) != 0 &&
       ::lstat(files::join(Dir, "adapter_config.json").c_str(), &St) != 0))
    return false;
  try {
    nlohmann::json M = parseJson<nlohmann::json>(files::readRegularFile(Manifest, files::kMaxSidecarBytes, "manifest"),
                                                 Manifest, "manifest.json");
    return M.is_object() && M.value("format", "") == "safetensors";
  } catch (const Error &) {
    return false;
  }
}

OutputDir::OutputDir(std::string O, const std::vector<std::string> &Inputs, bool Overwrite) : Out(std::move(O)) {
  const std::string Resolved = resolvedPath(Out);
  // Never written, whatever it holds: the root, the home directory, the
  // working directory and every directory above it.
  std::string Home = std::getenv("HOME") ? resolvedPath(std::getenv("HOME")) : "";
  std::string Here = resolvedPath(".");
  if (Resolved == "/" || Resolved == Home || within(Here, Resolved))
    throw Error("error: --out " + Out + " is " +
                (Resolved == "/" ? std::string("the root directory")
                 : Resolved == Home ? std::string("the home directory")
                                    : std::string("the working directory or one above it")) +
                ", which is never replaced; choose a new directory");
  for (const std::string &In : Inputs) {
    if (In.empty())
      continue;
    std::string R = resolvedPath(In);
    if (within(R, Resolved))
      throw Error("error: --out " + Out + (R == Resolved ? " is " : " contains ") + "the input " + In +
                  "; write the output somewhere else");
    if (within(Resolved, R))
      throw Error("error: --out " + Out + " lies inside the input " + In + "; write the output somewhere else");
  }
  struct stat St;
  if (::lstat(Out.c_str(), &St) != 0)
    return; // nothing there: nothing to protect but against a run that makes it meanwhile (commit)
  if (S_ISLNK(St.st_mode) || !S_ISDIR(St.st_mode) || !looksLikeOutput(Out))
    throw Error("error: --out " + Out + " exists and is not an output of bridge-run (no " +
                "latest_checkpointed_iteration.txt, no export manifest.json, not empty), so it is never replaced; "
                "choose a new directory");
  if (!Overwrite)
    throw Error("error: " + Out + " exists; pass --overwrite to replace it");
  Existed = true;
  Device = static_cast<uint64_t>(St.st_dev);
  Inode = static_cast<uint64_t>(St.st_ino);
}

std::string OutputDir::partialPath() const { return Out + ".partial-" + std::to_string(::getpid()); }

void OutputDir::commit(const std::string &Partial) const {
  std::string Aside;
  if (Existed) {
    Aside = Out + ".replaced-" + std::to_string(::getpid());
    if (renameNoReplace(Out, Aside) != 0) {
      if (errno != ENOENT)
        throw Error("error: cannot move " + Out + " aside to replace it: " + std::strerror(errno));
      Aside.clear(); // removed meanwhile: nothing to replace
    } else {
      struct stat St;
      if (::lstat(Aside.c_str(), &St) != 0 || static_cast<uint64_t>(St.st_dev) != Device ||
          static_cast<uint64_t>(St.st_ino) != Inode) {
        renameNoReplace(Aside, Out); // not ours to remove: put it back
        throw Error("error: " + Out + " was replaced by another directory while this command ran (another run?); "
                    "it is left as it is and this output is not written");
      }
    }
  }
  if (renameNoReplace(Partial, Out) != 0) {
    int E = errno;
    if (!Aside.empty())
      renameNoReplace(Aside, Out);
    if (E == EEXIST || E == ENOTEMPTY)
      throw Error("error: " + Out + " appeared while this command ran (another run writing the same --out?); it is "
                  "left as it is and this output is not written");
    throw Error("error: cannot rename " + Partial + " to " + Out + ": " + std::strerror(E));
  }
  if (!Aside.empty())
    files::removeAll(Aside);
}

} // namespace bridge
