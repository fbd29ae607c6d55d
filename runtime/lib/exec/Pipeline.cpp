//===- Pipeline.cpp - the ops stage and the one converter loop ------------===//
//
// runPipeline: the output built aside (`<out>.partial-<pid>`) and renamed
// into place when complete, taken over by --resume after an interrupt; the
// plan shared among processes in contiguous shares of equal bytes; converter
// threads that read from the source and run the ops; this thread handing
// their results to the sink strictly in plan order, so the bytes depend on
// nothing but the plan and the sink's writer count.
//
//===----------------------------------------------------------------------===//
#include "Pipeline.h"
#include "CudaSupport.h"

#include "bridge/Files.h"
#include "bridge/Interrupt.h"
#include "bridge/OutputDir.h"
#include "bridge/ProcessGroup.h"
#include "Resume.h"

#include <ATen/ops/empty.h>

#include <algorithm>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <mutex>
#include <optional>
#include <set>
#include <thread>
#include <unistd.h>

namespace bridge {

bool Conversion::hybrid() const { return fieldValue(S, Fields, "is_hybrid_model") == true; }

bool Reading::viewed(const at::Tensor &X) const {
  return std::find(Views.begin(), Views.end(), X.storage().data()) != Views.end();
}

at::Tensor Source::hfTensor(const std::string &, int64_t, Reading &) const {
  throw Error("error: internal: this source holds Megatron tensors, not HF tensors");
}

at::Tensor Source::global(const Conversion &, const WorkItem &, Reading &) const {
  throw Error("error: internal: this source holds HF tensors, not Megatron tensors");
}

DType Sink::hfType(const std::string &) const {
  throw Error("error: internal: this sink takes Megatron tensors, not HF tensors");
}

std::string nameList(const char *What, const std::vector<std::string> &Names) {
  if (Names.empty())
    return "";
  std::string M = "\n" + std::to_string(Names.size()) + " " + What + ":";
  for (size_t I = 0; I < Names.size() && I < 25; ++I)
    M += "\n  " + Names[I];
  if (Names.size() > 25)
    M += "\n  ... and " + std::to_string(Names.size() - 25) + " more";
  return M;
}

namespace {

using exec::OpConfig;
using exec::OpParams;

OpParams evalParams(const OpNode &N, const EvalEnv &Env, const std::string &Where) {
  OpParams P;
  for (const OpParam &Pm : N.Params)
    P[Pm.Name] = evaluate(Pm.Value, Env, Where);
  return P;
}

} // namespace

ChainInverse::ChainInverse(const PlannedTensor &PT, const Conversion &C,
                           const std::function<DType(const std::string &)> &HFType)
    : C(C), PT(PT), Cfg(C.S, C.Fields), Where(describe(PT.Rule->Loc)) {
  const Span<OpNode> &Ops = PT.Alternatives[0].Nodes;
  Nodes.resize(Ops.Size);
  prepare(Ops.Size - 1, HFType);
}

void ChainInverse::prepare(size_t At, const std::function<DType(const std::string &)> &HFType) {
  const SourceChain &Ch = PT.Alternatives[0];
  const Span<OpNode> &Ops = Ch.Nodes;
  OpTree Tree(Ops);
  auto SourceAt = [&](size_t I) -> const std::string & { return Ch.Sources[Tree.SourceOrdinal[I]]; };
  EvalEnv Env{nullptr, &C.Fields, &C.S, &PT.LoopVars};
  // The nodes the inverse reaches, from the chain's result down.
  std::vector<size_t> Todo{At};
  while (!Todo.empty()) {
    size_t I = Todo.back();
    Todo.pop_back();
    const OpNode &N = Ops[I];
    Node &P = Nodes[I];
    P.Op = &N;
    if (N.IsSource) {
      P.How = Step::Source;
      P.Source = SourceAt(I);
      continue;
    }
    P.Children = Tree.children(Ops, I);
    bool HasOptional = false;
    for (size_t Ci : P.Children)
      HasOptional |= Ops[Ci].IsSource && Ops[Ci].OptionalInput;
    if (HasOptional && C.QuantizeFP8Block && N.Kind == Op::DequantFP8Block) {
      // --quantize fp8-block: the weight in e4m3 and its block scales.
      P.How = Step::Invert;
      P.Params = evalParams(N, Env, Where);
      Todo.insert(Todo.end(), P.Children.begin(), P.Children.end());
      continue;
    }
    if (HasOptional) {
      P.How = Step::PassFirst;
      Todo.push_back(P.Children[0]);
      continue;
    }
    P.Params = evalParams(N, Env, Where);
    if (N.Kind == Op::SelectExpert || N.Kind == Op::RowBlock) {
      // The inverse of taking a slice is putting it back in its place.
      if (!Ops[P.Children[0]].IsSource)
        throw Error(Where + ": error: export needs '" + (N.Kind == Op::SelectExpert ? "expert" : "rows") +
                    "' applied directly to an HF tensor");
      P.How = N.Kind == Op::SelectExpert ? Step::Expert : Step::Rows;
      P.Source = SourceAt(P.Children[0]);
      if (P.How == Step::Expert)
        P.Index = P.Params.at("index").get<int64_t>();
      continue;
    }
    P.How = Step::Invert;
    for (size_t Ci : P.Children)
      if (Ops[Ci].IsSource)
        P.InputTypes.push_back(HFType(SourceAt(Ci)));
    Todo.insert(Todo.end(), P.Children.begin(), P.Children.end());
  }
}

std::vector<HFPiece> ChainInverse::run(const at::Tensor &Value) const {
  std::vector<HFPiece> Out;
  invert(Nodes.size() - 1, Value, Out);
  return Out;
}

void ChainInverse::invert(size_t At, const at::Tensor &V, std::vector<HFPiece> &Out) const {
  const Node &P = Nodes[At];
  switch (P.How) {
  case Step::Source:
    Out.push_back({HFPiece::Whole, P.Source, V, 0, {}, Where});
    return;
  case Step::PassFirst:
    invert(P.Children[0], V, Out);
    return;
  case Step::Expert:
    Out.push_back({HFPiece::Expert, P.Source, V, P.Index, {}, Where});
    return;
  case Step::Rows:
    Out.push_back({HFPiece::Rows, P.Source, V, 0, P.Params, Where});
    return;
  case Step::Invert: {
    std::vector<at::Tensor> Inputs =
        exec::inverse(P.Op->Kind, P.Op->Custom, V, P.Op->NumInputs, P.Params, Cfg, P.InputTypes, Where);
    for (size_t Ci = 0; Ci < P.Children.size(); ++Ci)
      invert(P.Children[Ci], Inputs[Ci], Out);
    return;
  }
  }
}

std::vector<HFPiece> invertChain(const PlannedTensor &PT, const Conversion &C, const at::Tensor &Value,
                                 const std::function<DType(const std::string &)> &HFType) {
  return ChainInverse(PT, C, HFType).run(Value);
}

namespace {

/// Tests of failure handling set BRIDGE_FAULT_INJECT=R:N[:kill|:pause]:
/// process R fails (with ':kill', dies by SIGKILL; with ':pause', waits up to
/// a minute for a signal, or until the file BRIDGE_FAULT_RELEASE names
/// exists) as it hands its N-th tensor to the writers.
void injectFault(int Rank, size_t Item) {
  static const char *Spec = std::getenv("BRIDGE_FAULT_INJECT");
  if (!Spec)
    return;
  int R = -1;
  size_t N = 0;
  char Mode[8] = "";
  if (std::sscanf(Spec, "%d:%zu:%7s", &R, &N, Mode) < 2 || R != Rank || N != Item)
    return;
  if (std::string(Mode) == "kill")
    ::kill(::getpid(), SIGKILL);
  if (std::string(Mode) == "pause") { // a window for a test's signal
    const char *Release = std::getenv("BRIDGE_FAULT_RELEASE");
    for (int Tick = 0; Tick < 6000 && !interruptSignal() && !(Release && files::exists(Release)); ++Tick)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    return;
  }
  throw Error("error: fault injected by BRIDGE_FAULT_INJECT=" + std::string(Spec));
}

/// This process's share of the work, in plan order: one item per planned
/// tensor; several processes take contiguous shares of equal elements.
std::vector<WorkItem> shareOf(const Conversion &C, const ProcessGroup &G) {
  std::vector<WorkItem> All, Mine;
  std::vector<double> Weight;
  double Total = 0;
  for (size_t KI = 0; KI < C.Keys.size(); ++KI)
    for (size_t M = 0; M < C.Keys[KI].Members.size(); ++M) {
      double N = 1;
      for (int64_t D : C.P.Tensors[C.Keys[KI].Members[M]].Shape)
        N *= static_cast<double>(D);
      All.push_back({KI, M});
      Weight.push_back(N);
      Total += N;
    }
  double Before = 0;
  for (size_t I = 0; I < All.size(); ++I) {
    int Owner = Total > 0 ? static_cast<int>((Before + Weight[I] / 2) / Total * G.size()) : 0;
    Before += Weight[I];
    if (std::min(Owner, G.size() - 1) == G.rank())
      Mine.push_back(All[I]);
  }
  return Mine;
}

double secondsSince(std::chrono::steady_clock::time_point T) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - T).count();
}

} // namespace

at::Tensor runChain(const PlannedTensor &PT, const std::vector<Json> &Fields, const SchemaTable &S,
                    const std::function<at::Tensor(const std::string &, int64_t Slice)> &Leaf,
                    const at::Device *Compute) {
  const SourceChain &C = PT.chain();
  std::string Where = describe(PT.Rule->Loc);
  OpConfig Cfg(S, Fields);
  EvalEnv Env{nullptr, &Fields, &S, &PT.LoopVars};
  // An optional input the checkpoint lacks is an undefined tensor; an op
  // with one passes its first input through (an unquantized source).
  std::vector<at::Tensor> Stack;
  size_t NextSource = 0;
  bool SliceTaken = false; // the 'expert' right after this source is done
  for (const OpNode &N : C.Nodes) {
    if (N.IsSource) {
      size_t K = NextSource++;
      Stack.push_back(Leaf(C.Sources[K], C.SourceSlice[K]));
      SliceTaken = C.SourceSlice[K] >= 0;
      continue;
    }
    if (SliceTaken) {
      // Postfix order puts a one-input op right after its source.
      SliceTaken = false;
      if (N.Kind == Op::SelectExpert)
        continue;
    }
    std::vector<at::Tensor> In(Stack.end() - N.NumInputs, Stack.end());
    Stack.resize(Stack.size() - N.NumInputs);
    bool Absent = false;
    for (const at::Tensor &X : In)
      Absent |= !X.defined();
    // Passing an FP8 tensor through would cast it without its scale.
    if (Absent && (In[0].scalar_type() == at::kFloat8_e4m3fn || In[0].scalar_type() == at::kFloat8_e5m2))
      throw Error(Where + ": error: an FP8 tensor feeding '" + C.Recipe +
                  "' has no scale in the checkpoint; FP8 weights are not converted without their scales");
    // An op that computes (dequantization) runs on the compute device;
    // what follows it stays there. Ops that only move bytes run where their
    // inputs are (the host, for a view of the source).
    if (!Absent && Compute && exec::opComputes(N.Kind))
      for (at::Tensor &X : In) {
        if (Compute->is_cuda() && X.is_cpu()) {
          // Staged through pinned memory (reused blocks): a full-speed copy
          // where one from the mapped file would go through the driver's
          // small bounce buffer.
          at::Tensor Pinned = at::empty(X.sizes(), X.options().pinned_memory(true));
          Pinned.copy_(X);
          X = Pinned.to(*Compute, /*non_blocking=*/true);
        } else {
          X = X.to(*Compute);
        }
      }
    Stack.push_back(Absent ? In[0] : exec::forward(N.Kind, N.Custom, In, evalParams(N, Env, Where), Cfg, Where));
  }
  return Stack.back();
}

Summary runPipeline(Source &Src, const Conversion &C, Sink &Snk, const PipelineOptions &O) {
  ProcessGroup One;
  ProcessGroup &G = O.Group ? *O.Group : One;
  Summary Sum;
  Sum.Mapping = C.Mapping->Name;

  // -- output directory: built aside, renamed into place when complete ----------------------
  const OutputDir OutTarget(O.OutDir, O.Inputs, O.Overwrite);
  tokenizerFiles(Src.tokenizerDir()); // checked before anything is written
  const std::string &Out = OutTarget.path();
  const bool Resumable = Snk.resumable();
  // A Megatron checkpoint's data lies in its iteration directory; where an
  // interrupted conversion of one is left, the user hears of --resume.
  const bool Checkpoint = !Snk.dataDir().empty();
  if (O.Resume && !Resumable)
    throw Error("error: --resume finishes torch_dist output; a legacy (--format torch) checkpoint is written in one "
                "pass, so run without --resume");
  Json Fingerprint;
  if (Resumable)
    Fingerprint = O.Fingerprint();
  Sum.PrepareSeconds = secondsSince(O.Start);
  // Rank 0 makes the directory, every process writes its files into it (a
  // file system all of them see), rank 0 renames it.
  std::string Tmp;
  bool Resumed = false;
  if (G.leader()) {
    Tmp = OutTarget.partialPath();
    if (O.Resume) {
      Resumed = !takeOverPartial(Out, Tmp, Fingerprint).empty();
      if (!Resumed && !O.Quiet)
        std::cerr << "bridge-run: no interrupted import of " << Out << " to resume; starting\n";
    } else if (Checkpoint) {
      if (std::vector<std::string> Left = partialsOf(Out); !Left.empty() && !O.Quiet)
        std::cerr << "bridge-run: note: " << Left[0]
                  << " holds an interrupted import; run with --resume to finish it instead\n";
    }
    if (!Resumed) {
      files::removeAll(Tmp);
      files::makeDirs(Checkpoint ? files::join(Tmp, Snk.dataDir()) : Tmp);
      if (Resumable)
        files::writeFile(files::join(Tmp, "resume.json"), Fingerprint.dump() + "\n");
    }
  }
  {
    std::string Said = G.broadcast("partial", (Resumed ? "1" : "0") + Tmp);
    Resumed = Said[0] == '1';
    Tmp = Said.substr(1);
  }
  std::string Dir = Checkpoint ? files::join(Tmp, Snk.dataDir()) : Tmp;
  if (!files::exists(Dir))
    throw Error("error: process " + std::to_string(G.rank()) + " does not see " + Dir +
                ", which process 0 made: the output must lie on a file system every process shares");

  try {
    at::Device Dev(O.Device);
    const uint64_t WindowBudget = std::max<uint64_t>(O.MemoryBudget / 4, 1);
    Snk.begin(C, Dir, G.rank(), Resumed);
    Src.checkKeys(C);
    std::vector<WorkItem> Items = shareOf(C, G);
    // Resuming: an item whose every chunk an interrupted run wrote intact is
    // kept, not converted again.
    if (Resumed)
      Items = Snk.keep(C, std::move(Items), Sum);
    uint64_t SourceBytes = 0;
    for (const WorkItem &It : Items)
      SourceBytes += Src.bytesOf(C, It);
    // Of several processes, rank 0 shows its own share.
    std::string Label = G.size() > 1 ? std::string(O.Label) + ", process 0" : O.Label;
    Progress Bar(Label.c_str(), Items.size(), SourceBytes, !O.Quiet && G.leader() && ::isatty(2));
    // Read-ahead: the sources of the tensors to come, in the order they will
    // be read, kept up to a memory budget ahead of the converter (from disk
    // the kernel then reads while this thread converts and writers write).
    std::vector<const TensorView *> ReadOrder;
    for (const WorkItem &It : Items)
      for (const TensorView *V : Src.readsOf(C, It))
        ReadOrder.push_back(V);
    size_t NextPrefetch = 0;
    uint64_t Prefetched = 0;
    std::set<const TensorView *> Asked;
    auto ReadAhead = [&](uint64_t Consumed) {
      while (NextPrefetch < ReadOrder.size() && Prefetched < Consumed + O.MemoryBudget) {
        const TensorView *V = ReadOrder[NextPrefetch++];
        if (Asked.insert(V).second) { // a stacked tensor is listed once per expert
          prefetch(*V);
          Prefetched += V->Bytes;
        }
      }
    };
    // Converters: several threads each turn one planned tensor into the
    // sink's form (ops on the host, dequantization on the device), so one
    // tensor's copies overlap another's; this thread hands the results to
    // the sink strictly in plan order, so the output is the same whatever
    // the timing. At most Window tensors are converted ahead of the sink,
    // and the memory they own (results of ops, not views of the mapped
    // source) counts against the memory budget: a quarter of it is the
    // converters' (work in progress included), the rest the writers' queue.
    struct Converted {
      std::unique_ptr<Prepared> Result;
      Reading Read;
      uint64_t OwnedBytes = 0;
      std::exception_ptr Failure;
      bool Ready = false;
    };
    std::vector<Converted> Slots(Items.size());
    const size_t Threads = std::max<size_t>(1, std::min<size_t>(O.Converters, Items.size()));
    const size_t Window = 2 * Threads;
    // Bytes owned by results being converted (reserved up front at two
    // bytes an element, then corrected) or converted and not yet handed.
    int64_t WindowBytes = 0;
    auto Reserve = [&](size_t I) {
      int64_t N = 2;
      for (int64_t D : plannedOf(C, Items[I]).Shape)
        N *= D;
      return N;
    };
    std::mutex Lock;
    std::condition_variable Changed;
    size_t NextItem = 0, Submitted = 0;
    bool Abort = false;
    // The ops stage: forward from an HF source, backward into an HF sink,
    // none from one Megatron format to another.
    auto Convert = [&](const WorkItem &It, Converted &Cv) {
      const PlannedTensor &PT = plannedOf(C, It);
      Reading &R = Cv.Read;
      at::Tensor Global;
      if (Src.hfSide())
        Global = runChain(
            PT, C.Fields, C.S, [&](const std::string &Name, int64_t Slice) { return Src.hfTensor(Name, Slice, R); },
            &Dev);
      else
        Global = Src.global(C, It, R);
      std::vector<HFPiece> Pieces;
      if (Snk.hfSide()) {
        Pieces = invertChain(PT, C, Global, [&](const std::string &N) { return Snk.hfType(N); });
        Global = at::Tensor();
      } else {
        Global = Global.contiguous();
        if (Global.is_cuda()) {
          // Into pinned memory: a fast copy, and the caching host allocator
          // reuses its blocks (no fresh pages to clear for every tensor).
          at::Tensor Pinned = at::empty(Global.sizes(), Global.options().device(at::kCPU).pinned_memory(true));
          Pinned.copy_(Global);
          Global = Pinned;
        }
      }
      Cv.Result = Snk.prepare(C, It, std::move(Global), std::move(Pieces), R);
      Cv.OwnedBytes = Cv.Result->OwnedBytes;
    };
    bool Computes = false;
    if (Src.hfSide())
      for (const PlannedTensor &PT : C.P.Tensors)
        for (const OpNode &N : PT.chain().Nodes)
          Computes |= !N.IsSource && exec::opComputes(N.Kind);
    // The device is tried here, on this thread, so that a bad one is an
    // error like any other (a converter thread could only stop).
    if (Computes)
      exec::ThreadStream Probe(static_cast<int>(Dev.type()), Dev.index());
    auto Work = [&] {
      // Each converter on a stream of its own: one thread's copies and
      // kernels overlap another's, and waiting for a result waits for this
      // thread's work only. (Only where some op computes: a plan that only
      // moves bytes never starts the device.)
      std::optional<exec::ThreadStream> Stream;
      if (Computes)
        Stream.emplace(static_cast<int>(Dev.type()), Dev.index());
      for (;;) {
        size_t I;
        {
          std::unique_lock<std::mutex> Guard(Lock);
          // Nothing ahead of the sink (NextItem == Submitted) always goes:
          // one tensor larger than the budget still converts.
          Changed.wait(Guard, [&] {
            return Abort || NextItem >= Items.size() ||
                   (NextItem < Submitted + Window &&
                    (NextItem == Submitted || WindowBytes + Reserve(NextItem) <= int64_t(WindowBudget)));
          });
          if (Abort || NextItem >= Items.size())
            return;
          I = NextItem++;
          WindowBytes += Reserve(I);
        }
        Converted Cv;
        try {
          Convert(Items[I], Cv);
        } catch (...) {
          Cv.Failure = std::current_exception();
        }
        std::lock_guard<std::mutex> Guard(Lock);
        Cv.Ready = true;
        WindowBytes += int64_t(Cv.OwnedBytes) - Reserve(I);
        Slots[I] = std::move(Cv);
        Changed.notify_all();
      }
    };
    std::vector<std::thread> Pool;
    auto StopPool = [&] {
      {
        std::lock_guard<std::mutex> Guard(Lock);
        Abort = true;
        Changed.notify_all();
      }
      for (std::thread &T : Pool)
        if (T.joinable())
          T.join();
    };
    try {
      for (size_t T = 0; T < Threads; ++T)
        Pool.emplace_back(Work);
      for (size_t I = 0; I < Items.size(); ++I) {
        ReadAhead(Sum.BytesRead);
        G.check(); // another process failed: stop too
        checkInterrupt();
        injectFault(G.rank(), I);
        Converted Cv;
        {
          std::unique_lock<std::mutex> Guard(Lock);
          Changed.wait(Guard, [&] { return Slots[I].Ready; });
          Cv = std::move(Slots[I]);
          WindowBytes -= int64_t(Cv.OwnedBytes);
        }
        if (Cv.Failure)
          std::rethrow_exception(Cv.Failure);
        Sum.TensorsWritten += Snk.put(C, Items[I], *Cv.Result);
        Cv.Result.reset();
        Sum.BytesRead += Cv.Read.Bytes;
        Sum.TensorsRead += Cv.Read.Tensors;
        Bar.step(Cv.Read.Bytes);
        std::lock_guard<std::mutex> Guard(Lock);
        Submitted = I + 1;
        Changed.notify_all();
      }
    } catch (...) {
      StopPool();
      throw;
    }
    StopPool();
    Bar.finish();
    Snk.finishData();
    double DataSeconds = secondsSince(O.Start) - Sum.PrepareSeconds;
    // Each process's records go to rank 0, which writes the metadata; the
    // totals to every process, for its summary.
    std::vector<std::string> Records = G.allGather("records", Snk.records());
    std::vector<std::string> Totals =
        G.allGather("totals", Json({Sum.BytesRead, Sum.TensorsRead, Sum.TensorsWritten, Snk.bytesWritten(),
                                    Snk.numFiles(), Sum.ResumedTensors, Sum.ResumedBytes})
                                  .dump());
    double PrepareSeconds = Sum.PrepareSeconds;
    Sum = Summary{Sum.Mapping};
    Sum.PrepareSeconds = PrepareSeconds;
    Sum.DataSeconds = DataSeconds; // this process's share; waiting for the others comes after
    for (const std::string &Text : Totals) {
      Json J = Json::parse(Text);
      Sum.BytesRead += J[0].get<uint64_t>();
      Sum.TensorsRead += J[1].get<uint64_t>();
      Sum.TensorsWritten += J[2].get<uint64_t>();
      Sum.BytesWritten += J[3].get<uint64_t>();
      Sum.FilesWritten += J[4].get<unsigned>();
      Sum.ResumedTensors += J[5].get<uint64_t>();
      Sum.ResumedBytes += J[6].get<uint64_t>();
    }
    if (Computes)
      Sum.PeakDeviceBytes = exec::peakDeviceBytes(static_cast<int>(Dev.type()), Dev.index());
    if (!G.leader()) {
      // Rank 0 finishes (metadata, sidecar, tracker, rename) alone.
      G.broadcast("committed", "");
      Sum.Seconds = secondsSince(O.Start);
      return Sum;
    }
    Records.erase(Records.begin());
    Snk.finish(C, Tmp, Dir, Records, Resumed);
    OutTarget.commit(Tmp);
    G.broadcast("committed", "1");
  } catch (...) {
    if (!G.leader())
      throw; // rank 0 removes the directory
    if (int Signal = interruptSignal(); Signal && Resumable) {
      // Interrupted (Ctrl-C, a scheduler's preemption): what is written
      // stays, never complete-looking, for --resume to finish.
      throw Error(std::string("error: interrupted by ") + (Signal == SIGINT ? "SIGINT" : "SIGTERM") +
                  "; nothing is at " + Out + ": the part written stays in " + Tmp +
                  ", and the same command with --resume finishes it");
    }
    try {
      files::removeShared(Tmp); // other processes may still be opening their files in it
    } catch (...) {
    }
    throw;
  }
  Sum.Seconds = secondsSince(O.Start);
  return Sum;
}

} // namespace bridge
