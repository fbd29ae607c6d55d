//===- Files.cpp - POSIX file-system operations ----------------------------===//
#include "bridge/Files.h"

#include "bridge/Config.h" // bridge::Error

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

namespace bridge::files {

namespace {
[[noreturn]] void fail(const std::string &What, const std::string &Path) {
  throw Error("error: cannot " + What + " " + Path + ": " + std::strerror(errno));
}
int removeOne(const char *P, const struct stat *, int, struct FTW *) { return ::remove(P); }
} // namespace

bool exists(const std::string &P) {
  struct stat St;
  return ::lstat(P.c_str(), &St) == 0;
}

bool isDirectory(const std::string &P) {
  struct stat St;
  return ::stat(P.c_str(), &St) == 0 && S_ISDIR(St.st_mode);
}

void makeDirs(const std::string &P) {
  if (P.empty() || isDirectory(P))
    return;
  size_t Slash = P.find_last_of('/');
  if (Slash != std::string::npos && Slash > 0)
    makeDirs(P.substr(0, Slash));
  if (::mkdir(P.c_str(), 0755) != 0 && errno != EEXIST)
    fail("create directory", P);
}

void removeAll(const std::string &P) {
  if (!exists(P))
    return;
  if (::nftw(P.c_str(), removeOne, 16, FTW_DEPTH | FTW_PHYS) != 0)
    fail("remove", P);
}

void rename(const std::string &From, const std::string &To) {
  if (::rename(From.c_str(), To.c_str()) != 0)
    fail("rename " + From + " to", To);
}

void copyFile(const std::string &From, const std::string &To) {
  int In = ::open(From.c_str(), O_RDONLY | O_CLOEXEC);
  if (In < 0)
    fail("read", From);
  int Out = ::open(To.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (Out < 0) {
    ::close(In);
    fail("write", To);
  }
  char Buf[1 << 16];
  ssize_t N;
  while ((N = ::read(In, Buf, sizeof Buf)) > 0)
    if (::write(Out, Buf, static_cast<size_t>(N)) != N) {
      ::close(In);
      ::close(Out);
      fail("write", To);
    }
  ::close(In);
  if (::close(Out) != 0 || N < 0)
    fail("copy to", To);
}

void writeFile(const std::string &P, const std::string &Bytes) {
  FILE *F = std::fopen(P.c_str(), "wb");
  if (!F)
    fail("write", P);
  bool OK = std::fwrite(Bytes.data(), 1, Bytes.size(), F) == Bytes.size();
  if ((std::fclose(F) != 0) || !OK)
    fail("write", P);
}

std::string join(const std::string &A, const std::string &B) {
  return A.empty() || A.back() == '/' ? A + B : A + "/" + B;
}

} // namespace bridge::files
