//===- Files.cpp - POSIX file-system operations ----------------------------===//
#include "bridge/Files.h"

#include "bridge/Config.h" // bridge::Error

#include <algorithm>
#include <cerrno>
#include <dirent.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <ftw.h>
#include <sys/mman.h>
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

std::vector<std::string> list(const std::string &Dir) {
  DIR *D = ::opendir(Dir.c_str());
  if (!D)
    fail("list", Dir);
  std::vector<std::string> Names;
  while (const dirent *E = ::readdir(D)) {
    std::string N = E->d_name;
    if (N != "." && N != "..")
      Names.push_back(N);
  }
  ::closedir(D);
  std::sort(Names.begin(), Names.end());
  return Names;
}

namespace {
/// BRIDGE_FAULT_DISK_FULL_AFTER, read once; 0 when unset.
uint64_t diskFullLimit() {
  static const uint64_t Limit = [] {
    const char *V = std::getenv("BRIDGE_FAULT_DISK_FULL_AFTER");
    return V ? std::strtoull(V, nullptr, 10) : 0;
  }();
  return Limit;
}
} // namespace

void injectedDiskFull(uint64_t WriteEnd, const std::string &Path) {
  if (diskFullLimit() && WriteEnd > diskFullLimit())
    throw Error("error: writing " + Path + " failed: " + std::strerror(ENOSPC));
}

void injectedDiskFullAppend(int Fd, size_t N, const std::string &Path) {
  if (diskFullLimit()) // the file offset is asked only in a test's run
    injectedDiskFull(static_cast<uint64_t>(::lseek(Fd, 0, SEEK_CUR)) + N, Path);
}

bool stat(const std::string &Path, uint64_t &Size, int64_t &ModifiedNs) {
  struct ::stat S;
  if (::stat(Path.c_str(), &S) != 0)
    return false;
  Size = static_cast<uint64_t>(S.st_size);
  ModifiedNs = static_cast<int64_t>(S.st_mtim.tv_sec) * 1000000000 + S.st_mtim.tv_nsec;
  return true;
}

MappedFile::MappedFile(const std::string &Path) {
  int Fd = ::open(Path.c_str(), O_RDONLY | O_CLOEXEC);
  if (Fd < 0) {
    Why = std::string("cannot open: ") + std::strerror(errno);
    return;
  }
  struct stat St;
  if (::fstat(Fd, &St) != 0) {
    Why = std::string("cannot stat: ") + std::strerror(errno);
    ::close(Fd);
    return;
  }
  Size = static_cast<size_t>(St.st_size);
  if (Size) {
    void *M = ::mmap(nullptr, Size, PROT_READ, MAP_PRIVATE, Fd, 0);
    if (M == MAP_FAILED) {
      Why = std::string("cannot map: ") + std::strerror(errno);
      Size = 0;
    } else {
      Data = M;
    }
  }
  ::close(Fd);
}

MappedFile::~MappedFile() {
  if (Data)
    ::munmap(Data, Size);
}

std::optional<std::string_view> MappedFile::range(uint64_t Offset, uint64_t Length) const {
  if (Offset > Size || Length > Size - Offset)
    return std::nullopt;
  return std::string_view(static_cast<const char *>(Data) + Offset, Length);
}

} // namespace bridge::files
