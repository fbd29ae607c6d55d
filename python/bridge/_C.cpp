//===- _C.cpp - the live bridge's Python extension --------------------------===//
//
// Binds the runtime's live model (runtime/lib/exec/Live.h) for Python: the
// HF checkpoint and its plan, one rank's model, its load and its export
// stream. The collectives run here, from C++, over the job's own
// torch.distributed process groups (c10d::ProcessGroup: NCCL on GPU, Gloo
// on CPU). Everything that blocks releases the GIL.
//
//===----------------------------------------------------------------------===//
#include "Live.h"

#include "bridge/Convert.h"
#include "bridge/Registry.h"

#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/extension.h>

#include <pybind11/stl.h>

namespace py = pybind11;
using namespace bridge;

namespace {

using PG = c10::intrusive_ptr<c10d::ProcessGroup>;

/// A torch.distributed process group as the live bridge's Group.
class ProcessGroupAdapter final : public live::Group {
public:
  explicit ProcessGroupAdapter(PG G) : G(std::move(G)) {}
  int size() const override { return G->getSize(); }
  int rank() const override { return G->getRank(); }
  std::vector<at::Tensor> allGather(const at::Tensor &Bytes) override {
    // One flat output, one collective (all_gather_into_tensor).
    at::Tensor Out = at::empty({Bytes.numel() * size()}, Bytes.options());
    at::Tensor In = Bytes;
    G->_allgather_base(Out, In)->wait();
    std::vector<at::Tensor> ByRank;
    for (int R = 0; R < size(); ++R)
      ByRank.push_back(Out.narrow(0, R * Bytes.numel(), Bytes.numel()));
    return ByRank;
  }
  void broadcast(at::Tensor &Bytes, int Root) override {
    std::vector<at::Tensor> T{Bytes};
    c10d::BroadcastOptions O;
    O.rootRank = Root;
    G->broadcast(T, O)->wait();
  }

private:
  PG G;
};

std::unique_ptr<ProcessGroupAdapter> adapt(const std::optional<PG> &G) {
  return G ? std::make_unique<ProcessGroupAdapter>(*G) : nullptr;
}

/// The export stream with the groups it uses kept alive beside it.
struct Stream {
  std::unique_ptr<ProcessGroupAdapter> TP, PP, EP, ETP;
  std::unique_ptr<live::ExportStream> S;
};

/// One bucket's finished tensors, handed to Python one pair at a time: a
/// list of thousands of (name, tensor) tuples kept alive while the caller
/// iterates gets promoted through the garbage collector's generations and
/// sets off full collections of the training job's heap (a fifth of a
/// 4,700-tensor export's time); made on demand, each pair dies as the
/// caller drops it. The batch gives up its reference with the pair.
struct Batch {
  std::vector<std::pair<std::string, at::Tensor>> Items;
  size_t Next = 0;
};

} // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "bridge's live bridge: HF weights into and out of a running Megatron-Core model";
  // Runtime errors (bad input, mismatched models) arrive as ValueError with
  // the runtime's message.
  py::register_exception<Error>(m, "BridgeError", PyExc_ValueError);

  m.def("families", [] {
    std::vector<std::string> Out;
    for (const RegistryEntry &E : allMappings())
      Out.push_back(E.Name);
    return Out;
  }, "The mapping names this build converts.");
  m.def("mapping_for", [](const std::string &ConfigJson) {
    Json Cfg = Json::parse(ConfigJson);
    return std::string(mappingFor(Cfg).Name);
  }, "The mapping that serves an HF config (JSON text); raises when none does.");

  py::class_<live::HFModel, std::shared_ptr<live::HFModel>>(m, "HFModel")
      .def(py::init([](const std::string &Dir, std::optional<std::tuple<int64_t, double, std::vector<std::string>>>
                                                      Adapters) {
             py::gil_scoped_release Free;
             if (!Adapters)
               return std::make_shared<live::HFModel>(Dir);
             AdapterSpec A{std::get<0>(*Adapters), std::get<1>(*Adapters), std::get<2>(*Adapters)};
             return std::make_shared<live::HFModel>(Dir, &A);
           }),
           py::arg("path"), py::arg("adapters") = std::nullopt,
           "The HF checkpoint; adapters: (dim, alpha, target modules) of the LoRA adapters the model carries.")
      .def_property_readonly("path", &live::HFModel::dir)
      .def_property_readonly("mapping", [](const live::HFModel &M) { return std::string(M.conversion().Mapping->Name); })
      .def("megatron_config", [](const live::HFModel &M) { return M.megatronConfig().dump(); })
      .def("hf_config", [](const live::HFModel &M) { return M.conversion().HFConfig.dump(); });

  py::class_<live::LiveModel>(m, "LiveModel")
      .def(py::init([](std::shared_ptr<live::HFModel> M, std::map<std::string, int> Sizes,
                       std::map<std::string, int> Ranks, bool LocalSpec,
                       std::vector<std::pair<std::string, at::Tensor>> Params,
                       std::map<std::string, std::pair<int, at::ScalarType>> Elsewhere) {
             Layout L;
             L.TP = Sizes.at("tp");
             L.PP = Sizes.at("pp");
             L.EP = Sizes.at("ep");
             L.ETP = Sizes.at("etp");
             live::Coordinates At{Ranks.at("tp"), Ranks.at("pp"), Ranks.at("ep"), Ranks.at("etp")};
             std::map<std::string, live::Remote> Others;
             for (auto &[Name, R] : Elsewhere)
               Others[Name] = {R.first, R.second};
             py::gil_scoped_release Free;
             return std::make_unique<live::LiveModel>(M, L, At, LocalSpec, std::move(Params), std::move(Others));
           }),
           py::arg("hf"), py::arg("sizes"), py::arg("ranks"), py::arg("local_spec"), py::arg("params"),
           py::arg("elsewhere"))
      .def("load", [](live::LiveModel &M, uint64_t MemoryBudget) {
        py::gil_scoped_release Free;
        M.load(MemoryBudget);
      }, py::arg("memory_budget") = live::LiveModel::kDefaultLoadBudget)
      .def_readonly_static("default_memory_budget", &live::LiveModel::kDefaultLoadBudget)
      .def("names", &live::LiveModel::names)
      .def("unchanged", &live::LiveModel::unchanged)
      .def_property_readonly("bytes_read", &live::LiveModel::bytesRead)
      .def("export", [](live::LiveModel &M, std::optional<PG> TP, std::optional<PG> PP, std::optional<PG> EP,
                        std::optional<PG> ETP, uint64_t BucketBytes, bool ToCPU, bool Receive,
                        const std::string &Adapters) {
             auto S = std::make_unique<Stream>();
             S->TP = adapt(TP);
             S->PP = adapt(PP);
             S->EP = adapt(EP);
             S->ETP = adapt(ETP);
             live::ExportOptions O;
             O.BucketBytes = BucketBytes;
             O.ToCPU = ToCPU;
             O.Receive = Receive;
             if (Adapters == "merged")
               O.Adapters = live::AdapterExport::Merged;
             else if (Adapters == "only")
               O.Adapters = live::AdapterExport::Only;
             else if (Adapters != "without")
               throw Error("error: adapters is 'without', 'merged' or 'only', not '" + Adapters + "'");
             S->S = M.exportHF(S->TP.get(), S->PP.get(), S->EP.get(), S->ETP.get(), O);
             return S;
           },
           py::arg("tp"), py::arg("pp"), py::arg("ep"), py::arg("etp"), py::arg("bucket_bytes"), py::arg("cpu"),
           py::arg("receive"), py::arg("adapters") = "without", py::keep_alive<0, 1>());

  py::class_<Batch>(m, "ExportBatch")
      .def("__iter__", [](Batch &B) -> Batch & { return B; }, py::return_value_policy::reference_internal)
      .def("__next__", [](Batch &B) {
        if (B.Next == B.Items.size())
          throw py::stop_iteration();
        auto &[Name, Tensor] = B.Items[B.Next++];
        return py::make_tuple(std::move(Name), std::move(Tensor));
      })
      .def("__len__", [](const Batch &B) { return B.Items.size() - B.Next; });

  py::class_<Stream>(m, "ExportStream")
      .def("next", [](Stream &S) -> std::optional<Batch> {
        std::optional<std::vector<std::pair<std::string, at::Tensor>>> Items;
        {
          py::gil_scoped_release Free;
          Items = S.S->next();
        }
        if (!Items)
          return std::nullopt;
        return Batch{std::move(*Items)};
      }, "The next bucket's finished HF tensors, an iterator of (name, tensor) pairs; None after the last.")
      .def_property_readonly("peak_bucket_bytes", [](const Stream &S) { return S.S->peakBucketBytes(); })
      .def("save", [](Stream &S, const std::string &Dir, bool Overwrite, unsigned Writers) {
        py::gil_scoped_release Free;
        return S.S->save(Dir, Overwrite, Writers);
      }, py::arg("path"), py::arg("overwrite") = false, py::arg("writers") = 8,
         "Writes the whole stream as an HF checkpoint (the receiving rank).")
      .def("drain", [](Stream &S) {
        py::gil_scoped_release Free;
        S.S->drain();
      }, "Takes part in every remaining collective, keeping nothing (the other ranks).");
}
