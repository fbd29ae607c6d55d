//===- Files.cpp - POSIX file-system operations ----------------------------===//
#include "bridge/Files.h"

#include "bridge/Error.h"
#include "bridge/Pickle.h"

#include <algorithm>
#include <new>
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

void removeShared(const std::string &P) {
  std::string Aside = P + ".removing";
  if (::rename(P.c_str(), Aside.c_str()) != 0) {
    removeAll(P); // absent, or not movable: remove in place
    return;
  }
  removeAll(Aside);
}

void rename(const std::string &From, const std::string &To) {
  if (::rename(From.c_str(), To.c_str()) != 0)
    fail("rename " + From + " to", To);
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

void writeAll(int Fd, int64_t Offset, const void *Data, uint64_t N, const std::string &Path) {
  const char *P = static_cast<const char *>(Data);
  for (uint64_t Put = 0; Put < N;) {
    ssize_t K = Offset < 0 ? ::write(Fd, P + Put, N - Put)
                           : ::pwrite(Fd, P + Put, N - Put, static_cast<off_t>(Offset + Put));
    if (K < 0 && errno == EINTR)
      continue;
    if (K <= 0)
      throw Error("error: writing " + Path + " failed: " + std::strerror(K < 0 ? errno : ENOSPC));
    Put += static_cast<uint64_t>(K);
  }
}

uint32_t writeWithCrc(int Fd, int64_t Offset, const uint8_t *Data, uint64_t N, const std::string &Path) {
  static const uint64_t Piece = [] {
    const char *E = std::getenv("BRIDGE_WRITE_PIECE_KIB");
    return E ? std::strtoull(E, nullptr, 10) << 10 : uint64_t(1) << 20;
  }();
  uint32_t Crc = 0;
  for (uint64_t Done = 0; Done < N;) {
    const uint64_t Len = Piece ? std::min(Piece, N - Done) : N - Done;
    Crc = crc32Update(Crc, Data + Done, Len);
    writeAll(Fd, Offset < 0 ? Offset : Offset + static_cast<int64_t>(Done), Data + Done, Len, Path);
    Done += Len;
  }
  return Crc;
}

bool stat(const std::string &Path, uint64_t &Size, int64_t &ModifiedNs) {
  struct ::stat S;
  if (::stat(Path.c_str(), &S) != 0)
    return false;
  Size = static_cast<uint64_t>(S.st_size);
  ModifiedNs = static_cast<int64_t>(S.st_mtim.tv_sec) * 1000000000 + S.st_mtim.tv_nsec;
  return true;
}

int openRegularFile(const std::string &Path, const std::string &What, uint64_t &Size) {
  // O_NONBLOCK: opening a FIFO for reading otherwise waits for a writer.
  int Fd = ::open(Path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (Fd < 0)
    throw Error("error: cannot open " + What + " " + Path + ": " + std::strerror(errno));
  struct stat St;
  if (::fstat(Fd, &St) != 0) {
    int E = errno;
    ::close(Fd);
    throw Error("error: cannot stat " + What + " " + Path + ": " + std::strerror(E));
  }
  if (!S_ISREG(St.st_mode)) {
    ::close(Fd);
    const char *Kind = S_ISFIFO(St.st_mode)  ? "a FIFO"
                       : S_ISDIR(St.st_mode) ? "a directory"
                       : S_ISCHR(St.st_mode) ? "a character device"
                       : S_ISBLK(St.st_mode) ? "a block device"
                       : S_ISSOCK(St.st_mode) ? "a socket"
                                              : "not a regular file";
    throw Error("error: " + What + " " + Path + " is " + Kind + ", not a regular file");
  }
  ::fcntl(Fd, F_SETFL, ::fcntl(Fd, F_GETFL) & ~O_NONBLOCK);
  Size = static_cast<uint64_t>(St.st_size);
  return Fd;
}

namespace {
std::string limitText(uint64_t Bytes) {
  return Bytes >= (uint64_t(1) << 30) ? std::to_string(Bytes >> 30) + " GiB" : std::to_string(Bytes >> 20) + " MiB";
}
} // namespace

std::string readRegularFile(const std::string &Path, uint64_t Limit, const std::string &What) {
  uint64_t Size = 0;
  int Fd = openRegularFile(Path, What, Size);
  if (Size > Limit) {
    ::close(Fd);
    throw Error("error: " + What + " " + Path + " is " + std::to_string(Size) + " bytes; at most " +
                limitText(Limit) + " are read");
  }
  std::string Out;
  try {
    Out.resize(static_cast<size_t>(Size));
  } catch (const std::bad_alloc &) {
    ::close(Fd);
    throw Error("error: " + What + " " + Path + " (" + std::to_string(Size) + " bytes) does not fit in memory");
  }
  size_t Done = 0;
  while (Done < Out.size()) {
    ssize_t N = ::read(Fd, Out.data() + Done, Out.size() - Done);
    if (N < 0 && errno == EINTR)
      continue;
    if (N <= 0) {
      int E = N < 0 ? errno : 0;
      ::close(Fd);
      throw Error("error: cannot read " + What + " " + Path + ": " +
                  (E ? std::strerror(E) : "it shrank while being read"));
    }
    Done += static_cast<size_t>(N);
  }
  ::close(Fd);
  return Out;
}

void copyRegularFile(const std::string &From, const std::string &To, uint64_t Limit, const std::string &What) {
  uint64_t Size = 0;
  int In = openRegularFile(From, What, Size);
  if (Size > Limit) {
    ::close(In);
    throw Error("error: " + What + " " + From + " is " + std::to_string(Size) + " bytes; at most " +
                limitText(Limit) + " are copied");
  }
  int Out = ::open(To.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0644);
  if (Out < 0) {
    int E = errno;
    ::close(In);
    throw Error("error: cannot write " + To + ": " + std::strerror(E));
  }
  // Copies the size fstat gave, no more: a file that grows meanwhile (or
  // lies about its size) cannot make this write without end.
  char Buf[1 << 16];
  uint64_t Left = Size;
  while (Left > 0) {
    ssize_t N = ::read(In, Buf, static_cast<size_t>(std::min<uint64_t>(Left, sizeof Buf)));
    if (N < 0 && errno == EINTR)
      continue;
    if (N <= 0 || ::write(Out, Buf, static_cast<size_t>(N)) != N) {
      int E = N < 0 ? errno : errno ? errno : EIO;
      ::close(In);
      ::close(Out);
      throw Error("error: cannot copy " + From + " to " + To + ": " +
                  (N == 0 ? std::string("it shrank while being read") : std::strerror(E)));
    }
    Left -= static_cast<uint64_t>(N);
  }
  ::close(In);
  if (::close(Out) != 0)
    throw Error("error: writing " + To + " failed: " + std::strerror(errno));
}

bool isPlainName(std::string_view N) {
  if (N.empty() || N.size() > 255 || N == "." || N == "..")
    return false;
  for (char C : N)
    if (C == '/' || static_cast<unsigned char>(C) < 0x20 || C == 0x7f)
      return false;
  return true;
}

std::string realPath(const std::string &P) {
  char *R = ::realpath(P.c_str(), nullptr);
  std::string Out = R ? R : "";
  std::free(R);
  return Out;
}

namespace {
bool under(const std::string &Path, const std::string &Dir) {
  return !Path.empty() && !Dir.empty() && Path.size() > Dir.size() && Path.compare(0, Dir.size(), Dir) == 0 &&
         (Dir == "/" || Path[Dir.size()] == '/');
}
} // namespace

bool resolvesInside(const std::string &Path, const std::string &Dir) {
  std::string Real = realPath(Path), RealDir = realPath(Dir);
  if (under(Real, RealDir))
    return true;
  // <repo>/snapshots/<revision>/<file> -> ../../blobs/<hash>
  size_t Slash = RealDir.find_last_of('/');
  if (Slash == std::string::npos || Slash == 0)
    return false;
  std::string Snapshots = RealDir.substr(0, Slash);
  size_t Up = Snapshots.find_last_of('/');
  if (Up == std::string::npos || Snapshots.substr(Up + 1) != "snapshots")
    return false;
  return under(Real, Snapshots.substr(0, Up) + "/blobs");
}

MappedFile::MappedFile(const std::string &Path) {
  int Fd = -1;
  uint64_t FileSize = 0;
  try {
    Fd = openRegularFile(Path, "file", FileSize);
  } catch (const Error &E) {
    std::string M = E.what();
    Why = M.compare(0, 7, "error: ") == 0 ? M.substr(7) : M;
    return;
  }
  Size = static_cast<size_t>(FileSize);
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
