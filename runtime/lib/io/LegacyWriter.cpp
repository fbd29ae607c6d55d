//===- LegacyWriter.cpp - Megatron-LM's per-rank torch checkpoint --------===//
#include "bridge/LegacyWriter.h"

#include "bridge/Files.h"
#include "bridge/Pickle.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <unistd.h>

namespace bridge {

struct LegacyWriter::RankFile {
  std::string Path;
  int Fd = -1;
  std::unique_ptr<TorchSaveWriter> Zip;
  struct Entry {
    std::string Name;
    bool None;
    DType Type;
    std::vector<int64_t> Shape;
    int64_t Numel;
    uint32_t Crc = 0; ///< of the storage's bytes
  };
  std::vector<Entry> Entries;
  size_t NextStorage = 0;
};

LegacyWriter::LegacyWriter(std::string IterDir, int TP, int PP, int EP)
    : Dir(std::move(IterDir)), TP(TP), PP(PP), EP(EP) {}

LegacyWriter::~LegacyWriter() {
  for (auto &[_, F] : Files)
    if (F->Fd >= 0)
      ::close(F->Fd); // abandoned: the caller removes the directory
}

std::string LegacyWriter::rankDir(int PP, int EP, int T, int P, int E) {
  char B[64];
  int N = std::snprintf(B, sizeof B, "mp_rank_%02d", T);
  if (PP > 1)
    N += std::snprintf(B + N, sizeof B - N, "_%03d", P);
  if (EP > 1)
    std::snprintf(B + N, sizeof B - N, "_%03d", E);
  return B;
}

LegacyWriter::RankFile &LegacyWriter::file(int T, int P, int E) {
  if (T < 0 || T >= TP || P < 0 || P >= PP || E < 0 || E >= EP)
    throw Error("error: internal: rank (" + std::to_string(T) + ", " + std::to_string(P) + ", " + std::to_string(E) +
                ") outside the legacy layout");
  auto &Slot = Files[{T, P, E}];
  if (!Slot) {
    auto F = std::make_unique<RankFile>();
    std::string Sub = files::join(Dir, rankDir(PP, EP, T, P, E));
    files::makeDirs(Sub);
    F->Path = files::join(Sub, "model_optim_rng.pt");
    F->Fd = ::open(F->Path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (F->Fd < 0)
      throw Error("error: cannot write " + F->Path + ": " + std::strerror(errno));
    RankFile *Raw = F.get();
    F->Zip = std::make_unique<TorchSaveWriter>([this, Raw](const void *D, size_t N) {
      files::injectedDiskFullAppend(Raw->Fd, N, Raw->Path);
      files::writeAll(Raw->Fd, -1, D, N, Raw->Path);
      Written += N;
    });
    Slot = std::move(F);
  }
  return *Slot;
}

void LegacyWriter::addTensor(int T, int P, int E, const std::string &Name, DType Type,
                             const std::vector<int64_t> &Shape, const void *Data, size_t Bytes) {
  RankFile &F = file(T, P, E);
  int64_t Numel = 1;
  for (int64_t D : Shape)
    Numel *= D;
  if (static_cast<uint64_t>(Numel) * dtypeSize(Type) != Bytes)
    throw Error("error: internal: '" + Name + "' has " + std::to_string(Bytes) + " bytes for its shape");
  F.Zip->add("data/" + std::to_string(F.NextStorage++), Data, Bytes);
  F.Entries.push_back({Name, false, Type, Shape, Numel, F.Zip->lastCrc()});
}

void LegacyWriter::addNone(int T, int P, int E, const std::string &Name) {
  file(T, P, E).Entries.push_back({Name, true, DType::U8, {}, 0});
}

namespace {

void pickleValue(PickleWriter &P, const Json &V) {
  if (V.is_null())
    P.none();
  else if (V.is_boolean())
    P.boolean(V.get<bool>());
  else if (V.is_number_integer())
    P.integer(V.get<int64_t>());
  else if (V.is_number())
    P.float64(V.get<double>());
  else if (V.is_string())
    P.str(V.get<std::string>());
  else if (V.is_array()) {
    P.emptyList();
    if (!V.empty()) {
      P.mark();
      for (const Json &X : V)
        pickleValue(P, X);
      P.appends();
    }
  } else {
    P.none(); // objects have no place in args
  }
}

} // namespace

void LegacyWriter::finish(const Json &Args) {
  for (auto &[Rank, F] : Files) {
    PickleWriter P;
    P.emptyDict();
    P.mark();
    P.str("args");
    // argparse.Namespace as pickle protocol 2 writes it: NEWOBJ, then its
    // attributes as BUILD state.
    P.global("argparse", "Namespace");
    P.emptyTuple();
    P.newObj();
    P.emptyDict();
    P.mark();
    for (auto It = Args.begin(); It != Args.end(); ++It) {
      P.str(It.key());
      pickleValue(P, It.value());
    }
    P.setItems();
    P.build();
    P.str("checkpoint_version");
    P.float64(3.0);
    P.str("iteration");
    P.integer(0);
    P.str("model");
    P.emptyDict();
    P.mark();
    size_t Storage = 0;
    for (const RankFile::Entry &E : F->Entries) {
      P.str(E.Name);
      if (E.None)
        P.none();
      else
        P.tensor(E.Type, std::to_string(Storage++), E.Numel, E.Shape);
    }
    P.setItems();
    P.setItems();
    F->Zip->addTorchRecords(P.finish());
    F->Zip->finish();
    int Fd = F->Fd;
    F->Fd = -1;
    if (::close(Fd) != 0)
      throw Error("error: writing " + F->Path + " failed: " + std::strerror(errno));
  }
}

Json LegacyWriter::manifest() const {
  Json Out = {{"format", "torch"}, {"files", Json::object()}};
  for (auto &[Rank, F] : Files) {
    Json Tensors = Json::object();
    size_t Storage = 0;
    for (const RankFile::Entry &E : F->Entries)
      if (!E.None)
        Tensors[E.Name] = {{"entry", "data/" + std::to_string(Storage++)}, {"crc32", E.Crc}};
    Out["files"][rankDir(PP, EP, std::get<0>(Rank), std::get<1>(Rank), std::get<2>(Rank)) + "/model_optim_rng.pt"] =
        Tensors;
  }
  return Out;
}

} // namespace bridge
