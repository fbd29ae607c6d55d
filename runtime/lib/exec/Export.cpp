//===- Export.cpp - a torch_dist checkpoint back to HF safetensors ----------===//
//
// The inverse of Import.cpp, driven by the same plan: every Megatron key is
// read once, each layer slice runs its op chain backwards, and each HF tensor
// goes into the shard file the source checkpoint had it in (recorded in the
// bridge.json sidecar), so a round trip reproduces the source bit for bit.
// Output is built aside and renamed into place when complete.
//
//===----------------------------------------------------------------------===//
#include "Checkpoint.h"
#include "Ops.h"

#include "bridge/Convert.h"
#include "bridge/Files.h"
#include "bridge/Interrupt.h"
#include "bridge/OutputDir.h"
#include "bridge/Registry.h"
#include "bridge/Safetensors.h"
#include "bridge/StrictJson.h"
#include "bridge/TorchDistReader.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <set>
#include <thread>
#include <mutex>
#include <atomic>
#include <iostream>
#include <unistd.h>


namespace bridge {
namespace {

/// The tree shape of a rule's postfix op nodes: where each subtree starts,
/// each op's children, and which planned source each source node reads.
struct OpTree {
  std::vector<size_t> Starts;
  std::vector<int> SourceOrdinal; ///< index into PlannedTensor::Sources, -1 for ops

  explicit OpTree(Span<OpNode> Nodes) : Starts(Nodes.Size), SourceOrdinal(Nodes.Size, -1) {
    std::vector<size_t> Stack;
    int NextSource = 0;
    for (size_t I = 0; I < Nodes.Size; ++I) {
      size_t S = I;
      for (unsigned K = 0; K < Nodes[I].NumInputs; ++K) {
        S = Stack.back();
        Stack.pop_back();
      }
      Starts[I] = S;
      Stack.push_back(S);
      if (Nodes[I].IsSource)
        SourceOrdinal[I] = NextSource++;
    }
  }

  /// The inputs of op node \p Node: the NumInputs subtrees right before it.
  std::vector<size_t> children(Span<OpNode> Nodes, size_t Node) const {
    std::vector<size_t> Out(Nodes[Node].NumInputs);
    size_t End = Node;
    for (size_t K = Out.size(); K-- > 0;) {
      Out[K] = End - 1;
      End = Starts[End - 1];
    }
    return Out;
  }
};

} // namespace

Summary runExport(const ExportOptions &O) {
  auto Begin = std::chrono::steady_clock::now();
  Summary Sum;
  const SchemaTable &S = schema();
  std::string Iter = iterationDir(O.MegatronDir);
  std::string SidePath = files::join(Iter, "bridge.json");
  if (!files::exists(SidePath))
    throw Error("error: " + Iter +
                " has no bridge.json: it was not written by 'bridge-run import', so the HF layout to restore is "
                "unknown");
  Json Side = readSidecar(SidePath);
  if (Side.value("checkpoint_format", "torch_dist") != "torch_dist")
    throw Error("error: " + Iter + " holds the legacy per-rank format; export reads torch_dist: run 'bridge-run "
                "reshard --megatron " + O.MegatronDir + " --out DIR' first");
  const MappingTable &T = mappingNamed(Side.at("mapping").get<std::string>());
  Sum.Mapping = T.Name;
  std::vector<Json> Fields = configFromJson(S, Side.at("megatron_config"), SidePath);
  const Json &HFRef = Side.at("hf_config");
  if (!Side.contains("hf_tensors"))
    throw Error("error: " + SidePath + ": hf_tensors is missing: the HF layout to restore is unknown");
  // Looked up once per tensor and source: a map (ordered_json looks up
  // linearly, quadratic over DeepSeek-V3's 90,000 tensors).
  nlohmann::json HFTensors = Side.at("hf_tensors");

  TorchDistCheckpoint Ckpt(Iter);
  // Pass-through rules: what the checkpoint holds under the target prefix.
  PassThroughLister Lister;
  Lister.BySource = false;
  Lister.List = [&](const std::string &Prefix) {
    std::vector<std::pair<std::string, std::vector<int64_t>>> Out;
    for (const std::string &K : Ckpt.tensorKeys())
      if (K.rfind(Prefix, 0) == 0)
        Out.push_back({K, Ckpt.tensor(K).Shape});
    return Out;
  };
  Plan P = expandPlan(T, S, Fields, /*UseTENames=*/true, &Lister, HFTensors.size());
  // A tensor imported from another of its rule's source layouts (a quantized
  // release) is written in the first layout: its tensors replace those read,
  // in the same file, with the shape and dtype the inverse produces
  // (null shape: known when produced; a stacked tensor counts its experts).
  std::set<std::string> Replaced;
  std::map<std::string, int64_t> StackedCount;
  const Json Chosen = Side.value("alternatives", Json::object());
  for (const PlannedTensor &PT : P.Tensors) {
    size_t A = Chosen.value(PT.LocalName, size_t{0});
    if (A == 0)
      continue;
    if (A >= PT.Alternatives.size())
      throw Error("error: " + SidePath + " names source layout " + std::to_string(A) + " for '" + PT.LocalName +
                  "', which its rule does not have");
    const SourceChain &Read = PT.Alternatives[A], &First = PT.Alternatives[0];
    std::string File;
    for (const std::string &Src : Read.Sources)
      if (HFTensors.contains(Src)) {
        File = HFTensors.at(Src).at("file").get<std::string>();
        Replaced.insert(Src);
      }
    for (size_t K = 0; K < First.Sources.size(); ++K) {
      const std::string &Src = First.Sources[K];
      if (First.SourceOptional[K])
        continue;
      if (!HFTensors.contains(Src))
        HFTensors[Src] = {{"file", File}, {"dtype", nullptr}, {"shape", nullptr}};
      if (First.SourceSlice[K] >= 0)
        StackedCount[Src] = std::max(StackedCount[Src], First.SourceSlice[K] + 1);
    }
  }
  for (const std::string &R : Replaced)
    HFTensors.erase(R);
  std::vector<DistKey> Keys = groupByKey(P, S, Fields, Side.value("layer_spec", "") == "local");
  for (const DistKey &K : Keys) {
    const DistTensor &DT = Ckpt.tensor(K.Key); // throws naming the key when absent
    if (DT.Shape != K.GlobalShape)
      throw Error("error: " + Iter + ": '" + K.Key + "' has a global shape that does not fit the config");
  }

  // Ops with an optional input (dequantization with its scale) were applied
  // when the source had that input: export then writes the op's result
  // under its first input's name and dtype of the result, and not the scale.
  std::set<std::string> Dropped, OwnDtype;
  std::map<std::string, DType> OwnType; // a dequantized weight's dtype: its Megatron key's
  for (const DistKey &K : Keys) {
    for (size_t Member : K.Members) {
      const PlannedTensor &PT = P.Tensors[Member];
      const SourceChain &Ch = PT.Alternatives[0];
      const Span<OpNode> &Nodes = Ch.Nodes;
      OpTree Tree(Nodes);
      for (size_t I = 0; I < Nodes.Size; ++I) {
        if (Nodes[I].IsSource)
          continue;
        std::vector<size_t> Children = Tree.children(Nodes, I);
        bool Applied = false;
        for (size_t C : Children)
          if (Nodes[C].IsSource && Nodes[C].OptionalInput && HFTensors.contains(Ch.Sources[Tree.SourceOrdinal[C]])) {
            Applied = true;
            Dropped.insert(Ch.Sources[Tree.SourceOrdinal[C]]);
          }
        if (Applied && Nodes[Children[0]].IsSource) {
          OwnDtype.insert(Ch.Sources[Tree.SourceOrdinal[Children[0]]]);
          OwnType[Ch.Sources[Tree.SourceOrdinal[Children[0]]]] = Ckpt.tensor(K.Key).Type;
        }
      }
    }
  }
  // What export writes: the source's tensors, except those import ignored.
  std::map<std::string, std::string> FileOf;
  std::set<std::string> Ignored(P.IgnoredPatterns.begin(), P.IgnoredPatterns.end());
  for (const std::string &D : Dropped)
    Ignored.insert(D);
  std::vector<std::string> NotExported;
  for (auto It = HFTensors.begin(); It != HFTensors.end(); ++It) {
    if (Ignored.count(It.key()))
      NotExported.push_back(It.key());
    else
      FileOf[It.key()] = It->at("file").get<std::string>();
  }

  const OutputDir Target(O.OutDir, {O.MegatronDir}, O.Overwrite);
  tokenizerFiles(files::join(Iter, "tokenizer")); // checked before anything is written
  std::string Tmp = Target.partialPath();
  files::removeAll(Tmp);
  files::makeDirs(Tmp);
  try {
    // Export's inverses only move bytes (a dequantized weight is written as
    // it is), so they run on the host, where the bytes are; the device name
    // is still checked.
    (void)at::Device(O.Device);
    // Files whose every tensor keeps the source's dtype and shape are laid
    // out now and written tensor by tensor, in parallel, as they come.
    std::map<std::string, TensorLayout> Known;
    for (auto &[Name, File] : FileOf) {
      const nlohmann::json &Meta = HFTensors.at(Name);
      if (Meta.at("shape").is_null())
        continue;
      auto Own = OwnType.find(Name);
      Known[Name] = {Own != OwnType.end() ? Own->second : *dtypeFromSafetensors(Meta.at("dtype").get<std::string>()),
                     Meta.at("shape").get<std::vector<int64_t>>()};
    }
    SafetensorsWriter W(Tmp, FileOf, Side.value("hf_sharded", false), std::move(Known), O.Writers, O.MemoryBudget);
    exec::OpConfig Cfg(S, Fields);
    std::map<std::string, std::vector<std::string>> TieCopyOf; // original -> its copies
    for (auto &[Copy, Of] : P.Ties)
      if (FileOf.count(Copy))
        TieCopyOf[Of].push_back(Copy);
    auto Add = [&](const std::string &Name, DType Type, const at::Tensor &V) {
      at::Tensor Host = V.to(exec::toScalarType(Type)).contiguous().cpu();
      std::vector<int64_t> Shape(Host.sizes().begin(), Host.sizes().end());
      TensorToWrite TW{Name, Type, Shape, {}};
      // The writer holds the tensor until its bytes are on disk.
      TW.Data = static_cast<const uint8_t *>(Host.data_ptr());
      TW.Size = Host.nbytes();
      TW.Owner = std::make_shared<at::Tensor>(Host);
      if (auto C = TieCopyOf.find(Name); C != TieCopyOf.end())
        for (const std::string &CopyName : C->second) {
          TensorToWrite Copy = TW;
          Copy.Name = CopyName;
          W.add(std::move(Copy));
          ++Sum.TensorsWritten;
        }
      W.add(std::move(TW));
      ++Sum.TensorsWritten;
    };
    auto Emit = [&](const std::string &Name, at::Tensor V) {
      if (!HFTensors.contains(Name))
        throw Error("error: " + SidePath + " records no HF tensor '" + Name +
                    "' (its hf_tensors list the tensors import read); this checkpoint was not imported from the "
                    "HF layout it now holds");
      const nlohmann::json &Meta = HFTensors.at(Name);
      if (Meta.at("shape").is_null()) // another layout's tensor: as produced
        return Add(Name, exec::fromScalarType(V.scalar_type()), V);
      std::vector<int64_t> Want = Meta.at("shape").get<std::vector<int64_t>>();
      // A vocabulary padded for training comes back to the source's rows.
      if (V.dim() >= 1 && !Want.empty() && V.size(0) > Want[0])
        V = V.narrow(0, 0, Want[0]);
      std::vector<int64_t> Got(V.sizes().begin(), V.sizes().end());
      if (Got != Want)
        throw Error("error: export of '" + Name + "' gives a tensor of another shape than the source's");
      auto Type = dtypeFromSafetensors(Meta.at("dtype").get<std::string>());
      if (OwnDtype.count(Name)) // a dequantized weight keeps its new dtype
        Type = exec::fromScalarType(V.scalar_type());
      Add(Name, *Type, V);
    };
    // HF tensors put together from pieces, each written once all its pieces
    // are in: one slice per expert of a tensor stacking all experts (the
    // 'expert' op's source), or one row block per 'rows' read.
    struct Pieces {
      at::Tensor Value;
      std::vector<bool> Filled;
      size_t Count = 0;
      const char *What = "";
    };
    std::map<std::string, Pieces> Assembling;
    // Puts piece \p Index of \p Name where \p SlotOf selects it in the whole,
    // which \p Make builds on the first piece (with its number of pieces).
    auto PutPiece = [&](const std::string &Name, const char *What, size_t Index, const at::Tensor &Piece,
                        const std::function<std::pair<at::Tensor, size_t>()> &Make,
                        const std::function<at::Tensor(const at::Tensor &)> &SlotOf, const std::string &Where) {
      Pieces &P = Assembling[Name];
      if (!P.Value.defined()) {
        auto [Whole, Count] = Make();
        P.Value = Whole;
        P.Filled.assign(Count, false);
        P.What = What;
      }
      if (Index >= P.Filled.size() || P.Filled[Index])
        throw Error(Where + ": error: " + What + " " + std::to_string(Index) + " of '" + Name +
                    "' is outside it or written twice");
      at::Tensor Slot = SlotOf(P.Value);
      if (Slot.sizes() != Piece.sizes())
        throw Error(Where + ": error: " + What + " " + std::to_string(Index) + " of '" + Name + "' is " +
                    exec::shapeText(Piece.sizes()) + ", its place in the source's tensor " +
                    exec::shapeText(Slot.sizes()));
      Slot.copy_(Piece);
      P.Filled[Index] = true;
      if (++P.Count == P.Filled.size()) {
        Emit(Name, P.Value);
        Assembling.erase(Name);
      }
    };
    auto StackSlice = [&](const std::string &Name, int64_t Index, const at::Tensor &Slice, const std::string &Where) {
      auto Make = [&]() -> std::pair<at::Tensor, size_t> {
        const nlohmann::json &Shape = HFTensors.at(Name).at("shape");
        std::vector<int64_t> Want = Shape.is_null() ? std::vector<int64_t>(Slice.sizes().begin(), Slice.sizes().end())
                                                    : Shape.get<std::vector<int64_t>>();
        if (Shape.is_null())
          Want.insert(Want.begin(), StackedCount.at(Name));
        if (Want.empty())
          throw Error(Where + ": error: '" + Name + "' of the source has no expert axis");
        return {at::empty(Want, Slice.options()), static_cast<size_t>(Want[0])};
      };
      PutPiece(Name, "expert", static_cast<size_t>(Index), Slice, Make, // negative: out of range
               [&](const at::Tensor &Whole) { return Whole.select(0, Index); }, Where);
    };
    auto PutRows = [&](const std::string &Name, const exec::OpParams &Params, const at::Tensor &Block,
                       const std::string &Where) {
      std::vector<int64_t> Sizes = Params.at("sizes").get<std::vector<int64_t>>();
      auto Make = [&]() -> std::pair<at::Tensor, size_t> {
        std::vector<int64_t> Shape(Block.sizes().begin(), Block.sizes().end());
        if (Shape.empty())
          throw Error(Where + ": error: a row block of '" + Name + "' has no rows");
        Shape[0] = 0;
        for (int64_t S : Sizes)
          Shape[0] += S;
        return {at::empty(Shape, Block.options()), Sizes.size()};
      };
      PutPiece(Name, "row block", static_cast<size_t>(Params.at("index").get<int64_t>()), Block, Make,
               [&](const at::Tensor &Whole) {
                 auto [Offset, Size] = exec::rowBlock(Params, Whole, Where);
                 return Whole.narrow(0, Offset, Size);
               },
               Where);
    };
    uint64_t AllBytes = 0;
    for (const DistKey &K : Keys) {
      const DistTensor &DT = Ckpt.tensor(K.Key);
      AllBytes += static_cast<uint64_t>(DT.numel()) * dtypeSize(DT.Type);
    }
    Progress Bar("export", P.Tensors.size(), AllBytes, !O.Quiet && ::isatty(2));
    // Several threads invert tensors at once; handing results to the writer
    // (and the expert stacking) is serialised by EmitLock. The files do not
    // depend on the order: each tensor has its offset in its shard.
    std::mutex EmitLock;
    std::vector<std::pair<size_t, size_t>> Items; // (key, member)
    for (size_t KI = 0; KI < Keys.size(); ++KI) {
      ++Sum.TensorsRead;
      for (size_t M = 0; M < Keys[KI].Members.size(); ++M)
        Items.push_back({KI, M});
    }
    auto ExportOne = [&](size_t KI, size_t M) {
      const DistKey &K = Keys[KI];
      const DistTensor &DT = Ckpt.tensor(K.Key);
      {
        const PlannedTensor &PT = P.Tensors[K.Members[M]];
        // One layer of a layer-stacked key at a time: memory holds one
        // layer. Where one chunk holds it, it is read where it lies in the
        // mapped file (the checkpoint outlives the writer); else assembled.
        std::vector<int64_t> Shape(DT.Shape.begin() + static_cast<std::ptrdiff_t>(K.Prefixes[M].size()),
                                   DT.Shape.end());
        auto Options = at::TensorOptions().dtype(exec::toScalarType(DT.Type));
        at::Tensor Value;
        if (const uint8_t *View = Ckpt.viewTensorAt(K.Key, K.Prefixes[M])) {
          Value = at::from_blob(const_cast<uint8_t *>(View), Shape, Options);
        } else {
          auto Bytes = std::make_shared<std::vector<uint8_t>>(Ckpt.readTensorAt(K.Key, K.Prefixes[M]));
          // The tensor owns its bytes: the writer may hold a view of it.
          Value = at::from_blob(Bytes->data(), Shape, [Bytes](void *) mutable { Bytes.reset(); }, Options);
        }
        {
          std::lock_guard<std::mutex> G(EmitLock);
          Sum.BytesRead += Value.nbytes();
          Bar.step(Value.nbytes());
        }
        const SourceChain &Ch = PT.Alternatives[0];
        const Span<OpNode> &Nodes = Ch.Nodes;
        std::string Where = describe(PT.Rule->Loc);
        EvalEnv Env{nullptr, &Fields, &S, &PT.LoopVars};
        OpTree Tree(Nodes);
        auto SourceAt = [&](size_t Node) -> const std::string & { return Ch.Sources[Tree.SourceOrdinal[Node]]; };
        std::function<void(size_t, at::Tensor)> Invert = [&](size_t Node, at::Tensor V) {
          const OpNode &N = Nodes[Node];
          if (N.IsSource) {
            std::lock_guard<std::mutex> G(EmitLock);
            Emit(SourceAt(Node), V);
            return;
          }
          std::vector<size_t> Children = Tree.children(Nodes, Node);
          bool HasOptional = false;
          for (size_t C : Children)
            HasOptional |= Nodes[C].IsSource && Nodes[C].OptionalInput;
          if (HasOptional) {
            // Dequantized on import (or passed through): the value is the
            // first input's, in the Megatron dtype.
            Invert(Children[0], V);
            return;
          }
          exec::OpParams Params;
          for (const OpParam &Pm : N.Params)
            Params[Pm.Name] = evaluate(Pm.Value, Env, Where);
          if (N.Kind == Op::SelectExpert) {
            // The inverse of taking one expert is putting it back in its place.
            if (!Nodes[Children[0]].IsSource)
              throw Error(Where + ": error: export needs 'expert' applied directly to an HF tensor");
            std::lock_guard<std::mutex> G(EmitLock);
            StackSlice(SourceAt(Children[0]), Params.at("index").get<int64_t>(), V, Where);
            return;
          }
          if (N.Kind == Op::RowBlock) {
            // The inverse of taking a row block is putting it back in place.
            if (!Nodes[Children[0]].IsSource)
              throw Error(Where + ": error: export needs 'rows' applied directly to an HF tensor");
            std::lock_guard<std::mutex> G(EmitLock);
            PutRows(SourceAt(Children[0]), Params, V, Where);
            return;
          }
          std::vector<DType> Types;
          for (size_t C : Children)
            if (Nodes[C].IsSource)
              Types.push_back(*dtypeFromSafetensors(HFTensors.at(SourceAt(C)).at("dtype").get<std::string>()));
          std::vector<at::Tensor> Inputs = exec::inverse(N.Kind, N.Custom, V, N.NumInputs, Params, Cfg, Types, Where);
          for (size_t C = 0; C < Children.size(); ++C)
            Invert(Children[C], Inputs[C]);
        };
        Invert(Nodes.Size - 1, Value);
      }
    };
    std::atomic<size_t> Next{0};
    std::exception_ptr Failure;
    std::mutex FailureLock;
    auto Work = [&] {
      for (size_t I; (I = Next++) < Items.size();) {
        try {
          checkInterrupt();
          ExportOne(Items[I].first, Items[I].second);
        } catch (...) {
          std::lock_guard<std::mutex> G(FailureLock);
          if (!Failure)
            Failure = std::current_exception();
          Next = Items.size(); // the others stop after their current tensor
        }
      }
    };
    std::vector<std::thread> Pool;
    try {
      for (unsigned T = 1; T < std::max(1u, O.Converters); ++T)
        Pool.emplace_back(Work);
    } catch (...) { // fewer threads: this one still does the rest
    }
    Work();
    for (std::thread &T : Pool)
      T.join();
    if (Failure)
      std::rethrow_exception(Failure);
    if (!Assembling.empty()) {
      const auto &[Name, P] = *Assembling.begin();
      throw Error("error: export of '" + Name + "' is missing pieces (" + P.What + "): " +
                  std::to_string(P.Filled.size() - P.Count) + " of " + std::to_string(P.Filled.size()) +
                  " were never produced");
    }
    Bar.finish();
    W.finish();
    Sum.BytesWritten = W.bytesWritten();
    // Python's NaN and Infinity literals as the source wrote them.
    files::writeFile(files::join(Tmp, "config.json"), dumpPythonJson(exportConfig(T, S, Fields, &HFRef), 2) + "\n");
    // Checksums taken as the tensors were written, for `bridge-run verify`.
    Json Manifest = {{"format", "safetensors"}, {"tensors", Json::object()}};
    for (const auto &[Name, Crc] : W.checksums())
      Manifest["tensors"][Name] = {{"file", FileOf.at(Name)}, {"crc32", Crc}};
    files::writeFile(files::join(Tmp, "manifest.json"), Manifest.dump(1) + "\n");
    copyTokenizerFiles(files::join(Iter, "tokenizer"), Tmp);
    Target.commit(Tmp);
  } catch (...) {
    try {
      files::removeAll(Tmp);
    } catch (...) {
    }
    throw;
  }
  if (!NotExported.empty() && !O.Quiet) {
    std::cerr << "bridge-run export: " << NotExported.size()
              << " source tensor(s) the mapping ignores were not written back, e.g. " << NotExported[0] << "\n";
  }
  Sum.Seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - Begin).count();
  return Sum;
}

} // namespace bridge
