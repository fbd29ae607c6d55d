//===- Resume.cpp - finishing an interrupted import ----------------------===//
#include "Resume.h"
#include "Checkpoint.h"

#include "bridge/Files.h"
#include "bridge/Pickle.h"
#include "bridge/StrictJson.h"
#include "bridge/TorchDistReader.h"

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>
#include <unistd.h>

namespace bridge {
namespace {

/// k of `__<Rank>_<k>.distcp`, or -1.
long fileIndex(const std::string &Name, int Rank) {
  std::string Prefix = "__" + std::to_string(Rank) + "_";
  const std::string Suffix = ".distcp";
  if (Name.size() <= Prefix.size() + Suffix.size() || Name.compare(0, Prefix.size(), Prefix) != 0 ||
      Name.compare(Name.size() - Suffix.size(), Suffix.size(), Suffix) != 0)
    return -1;
  std::string Digits = Name.substr(Prefix.size(), Name.size() - Prefix.size() - Suffix.size());
  if (Digits.empty() || Digits.size() > 6 || Digits.find_first_not_of("0123456789") != std::string::npos)
    return -1;
  return std::stol(Digits);
}

std::string dirOf(const std::string &Path) {
  size_t Slash = Path.find_last_of('/');
  return Slash == std::string::npos ? "." : Slash == 0 ? "/" : Path.substr(0, Slash);
}

std::string baseOf(const std::string &Path) {
  size_t Slash = Path.find_last_of('/');
  return Slash == std::string::npos ? Path : Path.substr(Slash + 1);
}

} // namespace

std::optional<uint32_t> recordCrc(std::string_view Record, const std::string &Where, bool Chunk, std::string &Why) {
  if (!Chunk)
    return crc32(reinterpret_cast<const uint8_t *>(Record.data()), Record.size());
  try {
    ZipArchive Zip(Record, Where);
    std::optional<uint32_t> Got;
    for (const ZipArchive::Entry &E : Zip.entries()) {
      Zip.read(E); // checks the entry's bytes against its own CRC-32
      if (E.Name.size() >= 7 && E.Name.compare(E.Name.size() - 7, 7, "/data/0") == 0)
        Got = E.Crc32; // so the chunk's CRC-32 is the one its entry holds
    }
    if (!Got)
      Why = "the record holds no tensor data";
    return Got;
  } catch (const Error &E) {
    Why = E.what();
    return std::nullopt;
  }
}

Journals readJournals(const std::string &Iter, int Rank) {
  Journals J;
  std::vector<std::string> Files; // the journaled .distcp files, each checked by a thread of its own
  for (const std::string &Name : files::list(Iter)) {
    long K = fileIndex(Name, Rank);
    if (K >= 0)
      J.NextFile = std::max<unsigned>(J.NextFile, static_cast<unsigned>(K) + 1);
    const std::string Ext = ".journal";
    if (Name.size() > Ext.size() && Name.compare(Name.size() - Ext.size(), Ext.size(), Ext) == 0 &&
        fileIndex(Name.substr(0, Name.size() - Ext.size()), Rank) >= 0)
      Files.push_back(Name.substr(0, Name.size() - Ext.size()));
  }
  std::vector<std::vector<JournaledRecord>> Kept(Files.size());
  std::vector<size_t> Rejected(Files.size(), 0);
  auto Check = [&](size_t I) {
    const std::string &File = Files[I];
    files::MappedFile Map(files::join(Iter, File));
    // A journal that cannot be read (not a regular file, too large) keeps
    // nothing of its file: those tensors are converted again.
    std::string Text;
    try {
      Text = files::readRegularFile(files::join(Iter, File + ".journal"), files::kMaxSidecarBytes, "the journal");
    } catch (const Error &) {
      return;
    }
    std::istringstream In(Text);
    std::string Line;
    while (std::getline(In, Line)) {
      JournaledRecord R;
      try {
        Json L = parseJson<Json>(Line, File + ".journal", "a line");
        R.Key = L.at("key").get<std::string>();
        R.Object = L.value("object", false);
        R.File = L.at("file").get<std::string>();
        R.Offset = L.at("offset").get<uint64_t>();
        R.Length = L.at("length").get<uint64_t>();
        R.Crc = L.at("crc32").get<uint32_t>();
        if (!R.Object) {
          std::optional<DType> T = dtypeFromTorch(L.at("dtype").get<std::string>());
          if (!T)
            throw Error("unknown dtype");
          R.Type = *T;
          R.Shape = L.at("shape").get<std::vector<int64_t>>();
          R.Offsets = L.at("offsets").get<std::vector<int64_t>>();
          R.Sizes = L.at("sizes").get<std::vector<int64_t>>();
        }
      } catch (const std::exception &) {
        ++Rejected[I]; // a line cut short by the end of the process
        continue;
      }
      if (R.File != File)
        continue;
      std::optional<std::string_view> Bytes = Map.range(R.Offset, R.Length);
      std::string Why;
      std::optional<uint32_t> Got;
      if (Bytes)
        Got = recordCrc(*Bytes, files::join(Iter, R.File) + " at " + std::to_string(R.Offset), !R.Object, Why);
      if (!Got || *Got != R.Crc) {
        ++Rejected[I];
        continue;
      }
      Kept[I].push_back(std::move(R));
    }
  };
  std::vector<std::thread> Threads;
  for (size_t I = 0; I < Files.size(); ++I)
    Threads.emplace_back(Check, I);
  for (std::thread &T : Threads)
    T.join();
  // One record per chunk or object: the first intact one (a chunk written
  // again after an earlier resume is in a later file).
  std::set<std::pair<std::string, std::vector<int64_t>>> Seen;
  for (size_t I = 0; I < Files.size(); ++I) {
    J.Rejected += Rejected[I];
    for (JournaledRecord &R : Kept[I])
      if (Seen.insert({R.Key, R.Offsets}).second)
        J.Kept.push_back(std::move(R));
  }
  return J;
}

std::string recordsJson(const std::vector<const JournaledRecord *> &Kept) {
  Json Files = Json::array(), Tensors = Json::array(), Bytes = Json::array();
  std::map<std::string, unsigned> FileIndex;
  std::map<std::string, size_t> TensorIndex;
  for (const JournaledRecord *R : Kept) {
    auto [It, New] = FileIndex.emplace(R->File, static_cast<unsigned>(FileIndex.size()));
    if (New)
      Files.push_back(R->File);
    if (R->Object) {
      Bytes.push_back({{"key", R->Key}, {"file", It->second}, {"offset", R->Offset}, {"length", R->Length},
                       {"crc32", R->Crc}});
      continue;
    }
    auto [T, NewKey] = TensorIndex.emplace(R->Key, Tensors.size());
    if (NewKey)
      Tensors.push_back({{"key", R->Key},
                         {"dtype", std::string(torchName(R->Type))},
                         {"shape", R->Shape},
                         {"chunks", Json::array()}});
    Tensors[T->second]["chunks"].push_back({R->Offsets, R->Sizes, It->second, R->Offset, R->Length, R->Crc});
  }
  return Json{{"files", Files}, {"tensors", Tensors}, {"bytes", Bytes}}.dump();
}

Json resumeFingerprint(const std::string &Command, const std::string &Mapping, const std::string &Format,
                       bool LocalSpec, const Layout &Par, int Processes, const std::string &SourceDir, const Plan &P) {
  Json F;
  F["command"] = Command;
  F["mapping"] = Mapping;
  F["format"] = Format;
  F["layer_spec"] = LocalSpec ? "local" : "transformer_engine";
  F["layout"] = {{"tp", Par.TP},   {"pp", Par.PP},   {"ep", Par.EP}, {"etp", Par.ETP}, {"vpp", Par.VPP},
                 {"first_stage_layers", Par.FirstStageLayers}, {"last_stage_layers", Par.LastStageLayers}};
  F["processes"] = Processes;
  std::string Dir = SourceDir;
  if (char *Real = ::realpath(Dir.c_str(), nullptr)) {
    Dir = Real;
    std::free(Real);
  }
  F["source_dir"] = Dir;
  // Every file of the source, and of a legacy source's rank directories.
  Json Stats = Json::array();
  auto StatFiles = [&](const std::string &D, const std::string &Rel, auto &Self) -> void {
    for (const std::string &N : files::list(D)) {
      std::string Path = files::join(D, N);
      if (files::isDirectory(Path)) {
        if (Rel.empty() && N != "tokenizer")
          Self(Path, N + "/", Self);
        continue;
      }
      uint64_t Size = 0;
      int64_t Time = 0;
      if (files::stat(Path, Size, Time))
        Stats.push_back({Rel + N, Size, Time});
    }
  };
  StatFiles(Dir, "", StatFiles);
  F["source_files"] = Stats;
  std::string PlanText;
  for (const PlannedTensor &PT : P.Tensors) {
    PlanText += PT.Name;
    for (int64_t D : PT.Shape)
      PlanText += " " + std::to_string(D);
    for (const std::string &Src : PT.sources())
      PlanText += " " + Src;
    PlanText += "\n";
  }
  F["plan"] = crc32(reinterpret_cast<const uint8_t *>(PlanText.data()), PlanText.size());
  return F;
}

std::vector<std::string> partialsOf(const std::string &Out) {
  std::string Dir = dirOf(Out), Prefix = baseOf(Out) + ".partial-";
  std::vector<std::string> Found;
  if (!files::isDirectory(Dir))
    return Found;
  for (const std::string &N : files::list(Dir))
    if (N.compare(0, Prefix.size(), Prefix) == 0 && files::isDirectory(files::join(Dir, N)))
      Found.push_back(Dir == "." && Out.compare(0, 2, "./") != 0 ? N : files::join(Dir, N));
  return Found;
}

std::string takeOverPartial(const std::string &Out, const std::string &Tmp, const Json &Now) {
  std::vector<std::string> Found = partialsOf(Out);
  if (Found.empty())
    return "";
  if (Found.size() > 1) {
    std::string List;
    for (const std::string &F : Found)
      List += "\n  " + F;
    throw Error("error: --resume finds several interrupted imports of " + Out + "; remove all but one:" + List);
  }
  const std::string &Was = Found[0];
  std::string Pid = Was.substr(Was.rfind(".partial-") + 9);
  if (!Pid.empty() && Pid.size() < 10 && Pid.find_first_not_of("0123456789") == std::string::npos) {
    long P = std::stol(Pid);
    if (P != ::getpid() && P > 0 && (::kill(static_cast<pid_t>(P), 0) == 0 || errno == EPERM))
      throw Error("error: " + Was + " is still being written by process " + Pid +
                  " on this host; wait for it, or stop it first");
  }
  std::string FingerprintPath = files::join(Was, "resume.json");
  if (!files::exists(FingerprintPath))
    throw Error("error: " + Was + " has no resume.json, so what it holds cannot be told; remove it to start over");
  Json Then = readJsonFile(FingerprintPath);
  // The first difference, in words: what the user changed.
  static const std::pair<const char *, const char *> Parts[] = {
      {"command", "command"},          {"mapping", "mapping"},        {"format", "checkpoint format"},
      {"layer_spec", "layer spec"},    {"layout", "layout"},          {"processes", "number of processes"},
      {"source_dir", "source"},        {"source_files", "source files (sizes or times)"},
      {"plan", "plan (the mapping's rules)"}};
  for (auto [Key, Words] : Parts)
    if (Then.value(Key, Json()) != Now.value(Key, Json()))
      throw Error("error: cannot resume from " + Was + ": it is another import (its " + Words + " differ" +
                  (std::string(Words).back() == 's' ? "" : "s") + ": " + Then.value(Key, Json()).dump() + " then, " +
                  Now.value(Key, Json()).dump() + " now); remove it, or run without --resume to start over");
  if (Was != Tmp)
    files::rename(Was, Tmp);
  return Tmp;
}

void removeResumeFiles(const std::string &Tmp, const std::string &Iter) {
  const std::string Ext = ".journal";
  for (const std::string &N : files::list(Iter))
    if (N.size() > Ext.size() && N.compare(N.size() - Ext.size(), Ext.size(), Ext) == 0)
      std::remove(files::join(Iter, N).c_str());
  std::remove(files::join(Tmp, "resume.json").c_str());
}

} // namespace bridge
