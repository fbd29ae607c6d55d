//===- Unpickle.cpp - restricted unpickler and torch.save archive reader ---===//
//
// Nothing here calls into a pickle's globals: REDUCE/NEWOBJ only record
// "class X with these arguments". The input is untrusted (a checkpoint from
// anywhere), so every read is bounds-checked, containers are type-checked
// before they are touched, and the finished value is checked for cycles and
// depth so that code walking it recursively cannot loop or overflow.
//
//===----------------------------------------------------------------------===//
#include "bridge/Unpickle.h"

#include "bridge/Pickle.h"

#include "bridge/Error.h"

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <optional>
#include <unordered_map>
#include <unordered_set>

namespace bridge {

// ---- allow-lists -------------------------------------------------------------------

namespace {
/// Canonical torch dtype names, as a dtype pickles itself ('torch', name).
/// Wider than DType on purpose: naming a dtype is harmless, and a precise
/// "unsupported dtype" later beats "forbidden global" here.
constexpr const char *TorchDTypeNames[] = {
    "float64",     "float32",         "float16",         "bfloat16",       "float8_e4m3fn",
    "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu", "float4_e2m1fn_x2",
    "int64",       "int32",           "int16",           "int8",           "uint8",
    "uint16",      "uint32",          "uint64",          "bool",           "complex32",
    "complex64",   "complex128",      "quint8",          "qint8",          "qint32",
    "quint4x2",    "quint2x4",
};

void addDTypes(GlobalAllowList &L) {
  for (const char *N : TorchDTypeNames)
    L.insert(std::string("torch.") + N);
}
} // namespace

const GlobalAllowList DcpMetadataGlobals = [] {
  GlobalAllowList L = {
      "torch.distributed.checkpoint.metadata.Metadata",
      "torch.distributed.checkpoint.metadata.TensorStorageMetadata",
      "torch.distributed.checkpoint.metadata.BytesStorageMetadata",
      "torch.distributed.checkpoint.metadata.ChunkStorageMetadata",
      "torch.distributed.checkpoint.metadata.TensorProperties",
      "torch.distributed.checkpoint.metadata._MEM_FORMAT_ENCODING",
      "torch.distributed.checkpoint.metadata.MetadataIndex",
      "torch.distributed.checkpoint.metadata.StorageMeta",
      // torch <= ~2.1 pickled TensorProperties from its old home.
      "torch.distributed._shard.sharded_tensor.metadata.TensorProperties",
      "torch.distributed._shard.sharded_tensor.metadata.MEM_FORMAT_ENCODING",
      "torch.distributed.checkpoint.filesystem._StorageInfo",
      "torch.distributed.checkpoint.filesystem._StoragePrefix",
      // MCore 0.11-0.15 could leave save plans and its own subclasses in.
      "torch.distributed.checkpoint.planner.SavePlan",
      "torch.distributed.checkpoint.planner.WriteItem",
      "torch.distributed.checkpoint.planner.WriteItemType",
      "torch.distributed.checkpoint.planner.TensorWriteData",
      "torch.distributed.checkpoint.planner.BytesIOWriteData",
      "megatron.core.dist_checkpointing.strategies.torch.MCoreMetadata",
      "megatron.core.dist_checkpointing.strategies.torch.MCoreSavePlan",
      "torch.Size",
      "torch.strided",
      "torch.contiguous_format",
      "torch.channels_last",
      "torch.preserve_format",
      "torch.serialization._get_layout",
      "pathlib.PosixPath",
      "collections.OrderedDict",
  };
  addDTypes(L);
  return L;
}();

const GlobalAllowList TorchSaveGlobals = [] {
  GlobalAllowList L = {
      "torch._utils._rebuild_tensor_v2",
      "collections.OrderedDict",
      "argparse.Namespace",
      "torch._utils._rebuild_tensor_v3",
      "torch.storage.UntypedStorage",
      "builtins.set",
      "builtins.frozenset",
      // Protocol 2 (torch.save's) spells builtins the Python 2 way.
      "__builtin__.set",
      "__builtin__.frozenset",
  };
#define BRIDGE_DTYPE_STORAGE(Id, Bytes, ST, Torch, Storage) L.insert(std::string("torch.") + Storage);
  BRIDGE_DTYPES(BRIDGE_DTYPE_STORAGE)
#undef BRIDGE_DTYPE_STORAGE
  addDTypes(L);
  return L;
}();

const GlobalAllowList LegacyCheckpointGlobals = [] {
  GlobalAllowList L = TorchSaveGlobals;
  // What Megatron-LM puts beside the model in model_optim_rng.pt: numpy's
  // RNG state (an ndarray whose bytes protocol 2 spells as _codecs.encode),
  // and args holding Megatron's own enums and classes; all stay names and
  // data here.
  for (const char *G : {"numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct", "numpy.ndarray",
                        "numpy.dtype", "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar",
                        "_codecs.encode", "pathlib.PosixPath", "megatron.*"})
    L.insert(G);
  return L;
}();

// ---- TensorRecord, PyValue -----------------------------------------------------------

int64_t TensorRecord::numel() const {
  int64_t N = 1;
  for (int64_t D : Shape)
    N *= D;
  return N;
}

const char *PyValue::kindName(Kind K) {
  switch (K) {
  case Kind::None:
    return "None";
  case Kind::Bool:
    return "bool";
  case Kind::Int:
    return "int";
  case Kind::Float:
    return "float";
  case Kind::Str:
    return "str";
  case Kind::Bytes:
    return "bytes";
  case Kind::Tuple:
    return "tuple";
  case Kind::List:
    return "list";
  case Kind::Dict:
    return "dict";
  case Kind::Global:
    return "global";
  case Kind::Object:
    return "object";
  case Kind::PersistentId:
    return "persistent id";
  case Kind::Tensor:
    return "tensor";
  }
  return "?";
}

bool PyValue::isGlobal(std::string_view Qualified) const {
  return Tag == Kind::Global && Qualified.size() == Text.size() + 1 + Name.size() &&
         Qualified.substr(0, Text.size()) == Text && Qualified[Text.size()] == '.' &&
         Qualified.substr(Text.size() + 1) == Name;
}

bool PyValue::isObjectOf(std::string_view Qualified) const {
  return Tag == Kind::Object && Class && Class->isGlobal(Qualified);
}

std::string PyValue::qualifiedName() const {
  if (Tag == Kind::Global)
    return Text + "." + Name;
  if (Tag == Kind::Object && Class)
    return Class->qualifiedName();
  return "";
}

const PyValue *PyValue::find(std::string_view Key) const {
  const PyValue *D = this;
  if (Tag == Kind::Object)
    D = State.get();
  if (!D || D->Tag != Kind::Dict)
    return nullptr;
  for (auto It = D->Entries.rbegin(); It != D->Entries.rend(); ++It)
    if (It->first && It->first->Tag == Kind::Str && It->first->Text == Key)
      return It->second.get();
  return nullptr;
}

namespace {
void reprInto(const PyValue &V, std::string &Out, size_t Limit) {
  if (Out.size() > Limit)
    return; // also bounds the work on values that share nodes heavily
  auto Quote = [&](const std::string &S, const char *Prefix) {
    Out += Prefix;
    Out += '\'';
    for (unsigned char C : S) {
      if (Out.size() > Limit)
        return;
      if (C == '\'' || C == '\\') {
        Out += '\\';
        Out += static_cast<char>(C);
      } else if (C >= 0x20 && C < 0x7f) {
        Out += static_cast<char>(C);
      } else {
        static const char Hex[] = "0123456789abcdef";
        Out += "\\x";
        Out += Hex[C >> 4];
        Out += Hex[C & 15];
      }
    }
    Out += '\'';
  };
  auto Seq = [&](const std::vector<PyValuePtr> &Items) {
    for (size_t I = 0; I < Items.size() && Out.size() <= Limit; ++I) {
      if (I)
        Out += ", ";
      reprInto(*Items[I], Out, Limit);
    }
  };
  auto Map = [&](const std::vector<PyValue::Entry> &Entries) {
    for (size_t I = 0; I < Entries.size() && Out.size() <= Limit; ++I) {
      if (I)
        Out += ", ";
      reprInto(*Entries[I].first, Out, Limit);
      Out += ": ";
      reprInto(*Entries[I].second, Out, Limit);
    }
  };
  using K = PyValue::Kind;
  switch (V.Tag) {
  case K::None:
    Out += "None";
    break;
  case K::Bool:
    Out += V.Bool ? "True" : "False";
    break;
  case K::Int:
    Out += std::to_string(V.Int);
    break;
  case K::Float: {
    char Buf[32];
    std::snprintf(Buf, sizeof(Buf), "%.17g", V.Float);
    Out += Buf;
    if (!std::strpbrk(Buf, ".eni")) // Python writes 3.0, not 3 (but inf, nan)
      Out += ".0";
    break;
  }
  case K::Str:
    Quote(V.Text, "");
    break;
  case K::Bytes:
    Quote(V.Text, "b");
    break;
  case K::Tuple:
    Out += '(';
    Seq(V.Items);
    if (V.Items.size() == 1)
      Out += ',';
    Out += ')';
    break;
  case K::List:
    Out += '[';
    Seq(V.Items);
    Out += ']';
    break;
  case K::Dict:
    Out += '{';
    Map(V.Entries);
    Out += '}';
    break;
  case K::Global:
    Out += V.Text + "." + V.Name;
    break;
  case K::Object:
    Out += V.qualifiedName();
    if (V.Args)
      reprInto(*V.Args, Out, Limit);
    if (V.State) {
      Out += "<state ";
      reprInto(*V.State, Out, Limit);
      Out += '>';
    }
    break;
  case K::PersistentId:
    Out += "persistent_id";
    if (V.Args) {
      Out += '(';
      reprInto(*V.Args, Out, Limit);
      Out += ')';
    }
    break;
  case K::Tensor:
    Out += "tensor(";
    if (V.Tensor) {
      Out += std::string(torchName(V.Tensor->Type)) + ", [";
      for (size_t I = 0; I < V.Tensor->Shape.size(); ++I)
        Out += (I ? ", " : "") + std::to_string(V.Tensor->Shape[I]);
      Out += ']';
    }
    Out += ')';
    break;
  }
}
} // namespace

std::string PyValue::repr(size_t Limit) const {
  std::string Out;
  reprInto(*this, Out, Limit);
  if (Out.size() > Limit) {
    Out.resize(Limit);
    Out += "...";
  }
  return Out;
}

// ---- the unpickler -------------------------------------------------------------------

namespace {
using Kind = PyValue::Kind;

class Unpickler {
public:
  Unpickler(std::string_view In, const GlobalAllowList &Allowed, const std::string &Where)
      : In(In), Allowed(Allowed), Where(Where), NodeLimit(UnpickleMinNodes + In.size() / UnpickleBytesPerNode),
        MemoryLimit(std::min(UnpickleMaxMemory, UnpickleMinMemory + UnpickleMemoryPerByte * In.size())) {}
  ~Unpickler();
  PyValuePtr run();

private:
  [[noreturn]] void fail(const std::string &Msg) const {
    throw Error("error: " + Where + ": " + Msg + " (pickle byte " + std::to_string(OpPos) + ")");
  }
  const uint8_t *take(uint64_t N);
  uint64_t le(unsigned N);
  std::string_view line();
  int64_t decimal(std::string_view Text, const char *What);

  void charge(uint64_t Bytes);
  PyValuePtr make(Kind K);
  PyValuePtr intNode(int64_t V);
  PyValuePtr boolNode(bool V);
  PyValuePtr strNode(std::string_view V);
  void push(PyValuePtr V) {
    Stack.push_back(std::move(V));
    if (Stack.size() > StackHigh) { // the stack's memory is its high-water mark
      charge(sizeof(PyValuePtr));
      StackHigh = Stack.size();
    }
  }
  /// Charges \p N more items (or dict entries) of \p Each bytes.
  void chargeItems(size_t N, size_t Each) { charge(static_cast<uint64_t>(N) * Each); }
  size_t floor() const { return Marks.empty() ? 0 : Marks.back(); }
  PyValuePtr pop(const char *Op);
  PyValuePtr &top(const char *Op);
  std::vector<PyValuePtr> popMark(const char *Op);

  void memoPut(uint64_t Index, const char *Op);
  void memoGet(uint64_t Index);
  void global(std::string Module, std::string Name);
  void call(PyValuePtr Callable, PyValuePtr Args, PyValuePtr Kwargs, const char *Op);
  void appendTo(PyValue &Target, std::vector<PyValuePtr> Items, const char *Op);
  void setItemsOn(PyValue &Target, std::vector<PyValuePtr> KeysAndValues, const char *Op);
  void checkGraph();

  std::string_view In;
  size_t Pos = 0, OpPos = 0;
  const GlobalAllowList &Allowed;
  const std::string &Where;
  std::vector<PyValuePtr> Stack;
  std::vector<size_t> Marks; ///< Stack sizes at each open MARK
  std::unordered_map<uint64_t, PyValuePtr> Memo;
  std::vector<PyValuePtr> All; ///< every node made, by Serial; for checkGraph and teardown
  PyValuePtr NoneNode, TrueNode, FalseNode, EmptyTuple;
  std::unordered_map<int64_t, PyValuePtr> Ints;
  std::unordered_map<std::string, PyValuePtr> Globals;
  /// Short strings (keys, file names) without a memo entry repeat a lot in
  /// protocol-2 pickles; they are interned up to this length.
  static constexpr uint64_t MaxInternedStr = 256;
  /// Approximate bytes of a hash map entry (node, bucket): the interned
  /// ints, strings and globals, and the memo.
  static constexpr uint64_t InternEntryBytes = 48, MemoEntryBytes = 64;
  std::unordered_map<std::string_view, PyValuePtr> Strs;
  bool Committed = false;
  /// Budgets (Unpickle.h): nodes made, and bytes charged so far against
  /// MemoryLimit (never given back: a budget of what was ever held).
  const uint64_t NodeLimit, MemoryLimit;
  uint64_t Charged = 0;
  size_t StackHigh = 0, MarksHigh = 0;
};

Unpickler::~Unpickler() {
  if (Committed)
    return;
  // A failed load may have left cycles or very deep chains; cutting every
  // edge first lets the nodes go without recursion or leaks.
  for (const PyValuePtr &V : All) {
    V->Items.clear();
    V->Entries.clear();
    V->Class.reset();
    V->Args.reset();
    V->Kwargs.reset();
    V->State.reset();
  }
}

const uint8_t *Unpickler::take(uint64_t N) {
  if (N > In.size() - Pos)
    fail("truncated: needs " + std::to_string(N) + " more bytes, " + std::to_string(In.size() - Pos) + " left");
  const uint8_t *P = reinterpret_cast<const uint8_t *>(In.data()) + Pos;
  Pos += static_cast<size_t>(N);
  return P;
}

uint64_t Unpickler::le(unsigned N) {
  const uint8_t *P = take(N);
  uint64_t V = 0;
  for (unsigned I = 0; I < N; ++I)
    V |= static_cast<uint64_t>(P[I]) << (8 * I);
  return V;
}

std::string_view Unpickler::line() {
  size_t End = In.find('\n', Pos);
  if (End == std::string_view::npos)
    fail("truncated: unterminated text argument");
  std::string_view L = In.substr(Pos, End - Pos);
  Pos = End + 1;
  return L;
}

int64_t Unpickler::decimal(std::string_view Text, const char *What) {
  int64_t V = 0;
  const char *B = Text.data(), *E = Text.data() + Text.size();
  if (B != E && *B == '+')
    ++B;
  auto [P, Ec] = std::from_chars(B, E, V);
  if (Ec != std::errc() || P != E || B == E)
    fail(std::string("bad ") + What + " '" + std::string(Text.substr(0, 40)) + "'");
  return V;
}

void Unpickler::charge(uint64_t Bytes) {
  Charged += Bytes;
  if (Charged > MemoryLimit)
    fail("holding its values would take more than " + std::to_string(MemoryLimit >> 20) + " MiB (the budget for " +
         std::to_string(In.size()) + " bytes of pickle: " + std::to_string(UnpickleMemoryPerByte) +
         " bytes per byte plus " + std::to_string(UnpickleMinMemory >> 20) + " MiB, at most " +
         std::to_string(UnpickleMaxMemory >> 30) + " GiB); not a checkpoint's pickle");
}

PyValuePtr Unpickler::make(Kind K) {
  if (All.size() >= NodeLimit || All.size() >= UINT32_MAX)
    fail("makes more than " + std::to_string(All.size()) + " values from " + std::to_string(In.size()) +
         " bytes of pickle (at most one per " + std::to_string(UnpickleBytesPerNode) + " bytes plus " +
         std::to_string(UnpickleMinNodes) + "); not a checkpoint's pickle (a storm of empty containers?)");
  charge(UnpickleNodeBytes);
  auto V = std::make_shared<PyValue>(K);
  V->Serial = static_cast<uint32_t>(All.size());
  All.push_back(V);
  return V;
}

// Immutable leaves are made once per pickle: a big .metadata repeats the
// same few ints, None and classes hundreds of thousands of times.
PyValuePtr Unpickler::intNode(int64_t V) {
  PyValuePtr &Slot = Ints[V];
  if (!Slot) {
    Slot = make(Kind::Int);
    Slot->Int = V;
    charge(InternEntryBytes);
  }
  return Slot;
}

PyValuePtr Unpickler::strNode(std::string_view V) {
  auto It = Strs.find(V);
  if (It != Strs.end())
    return It->second;
  PyValuePtr S = make(Kind::Str);
  charge(V.size() + InternEntryBytes);
  S->Text.assign(V);
  Strs.emplace(S->Text, S); // the key views the node's own text
  return S;
}

PyValuePtr Unpickler::boolNode(bool V) {
  PyValuePtr &Slot = V ? TrueNode : FalseNode;
  if (!Slot) {
    Slot = make(Kind::Bool);
    Slot->Bool = V;
  }
  return Slot;
}

PyValuePtr Unpickler::pop(const char *Op) {
  if (Stack.size() <= floor())
    fail(std::string(Op) + " on an empty stack");
  PyValuePtr V = std::move(Stack.back());
  Stack.pop_back();
  return V;
}

PyValuePtr &Unpickler::top(const char *Op) {
  if (Stack.size() <= floor())
    fail(std::string(Op) + " on an empty stack");
  return Stack.back();
}

std::vector<PyValuePtr> Unpickler::popMark(const char *Op) {
  if (Marks.empty())
    fail(std::string(Op) + " without a MARK");
  size_t From = Marks.back();
  Marks.pop_back();
  std::vector<PyValuePtr> Items(std::make_move_iterator(Stack.begin() + From), std::make_move_iterator(Stack.end()));
  Stack.resize(From);
  return Items;
}

void Unpickler::memoPut(uint64_t Index, const char *Op) {
  const PyValuePtr &V = top(Op);
  auto It = Memo.find(Index);
  if (It == Memo.end()) {
    // Python memoizes each value once: more entries than the node budget
    // is a storm of PUTs or MEMOIZEs.
    if (Memo.size() >= NodeLimit)
      fail("stores more than " + std::to_string(NodeLimit) + " memo entries from " + std::to_string(In.size()) +
           " bytes of pickle; not a checkpoint's pickle");
    charge(MemoEntryBytes);
    It = Memo.emplace(Index, nullptr).first;
  }
  It->second = V;
}

void Unpickler::memoGet(uint64_t Index) {
  auto It = Memo.find(Index);
  if (It == Memo.end())
    fail("memo key " + std::to_string(Index) + " was never stored");
  push(It->second);
}

void Unpickler::global(std::string Module, std::string Name) {
  std::string Qualified = Module + "." + Name;
  // An entry 'pkg.*' admits every name under the package 'pkg' (as data: a
  // global is never called here).
  auto UnderPackage = [&] {
    for (size_t Dot = Module.size(); Dot != std::string::npos; Dot = Module.rfind('.', Dot - 1)) {
      if (Allowed.count(Module.substr(0, Dot) + ".*"))
        return true;
      if (Dot == 0)
        break;
    }
    return false;
  };
  if (!Allowed.count(Qualified) && !UnderPackage())
    fail("forbidden global '" + Qualified + "' in " + Where);
  PyValuePtr &G = Globals[Qualified];
  if (!G) {
    G = make(Kind::Global);
    charge(Qualified.size() * 2 + InternEntryBytes);
    G->Text = std::move(Module);
    G->Name = std::move(Name);
  }
  push(G);
}

void Unpickler::call(PyValuePtr Callable, PyValuePtr Args, PyValuePtr Kwargs, const char *Op) {
  if (!Callable->is(Kind::Global))
    fail(std::string(Op) + " of a " + PyValue::kindName(Callable->Tag) + ", not of a class or function");
  if (!Args->is(Kind::Tuple))
    fail(std::string(Op) + " arguments are a " + PyValue::kindName(Args->Tag) + ", not a tuple");
  if (Kwargs && !Kwargs->is(Kind::Dict))
    fail(std::string(Op) + " keyword arguments are a " + PyValue::kindName(Kwargs->Tag) + ", not a dict");
  bool NoKwargs = !Kwargs || Kwargs->Entries.empty();
  // Containers the pickle builds through their class become the plain
  // container, so that SETITEMS / APPENDS and consumers see one shape.
  if (Callable->isGlobal("collections.OrderedDict") && NoKwargs && Args->Items.size() <= 1) {
    PyValuePtr D = make(Kind::Dict);
    if (Args->Items.size() == 1) {
      const PyValue &Pairs = *Args->Items[0];
      if (!Pairs.is(Kind::List) && !Pairs.is(Kind::Tuple))
        fail("OrderedDict built from a " + std::string(PyValue::kindName(Pairs.Tag)));
      chargeItems(Pairs.Items.size(), sizeof(PyValue::Entry));
      D->Entries.reserve(Pairs.Items.size());
      for (const PyValuePtr &P : Pairs.Items) {
        if ((!P->is(Kind::Tuple) && !P->is(Kind::List)) || P->Items.size() != 2)
          fail("OrderedDict built from something other than key/value pairs");
        D->Entries.emplace_back(P->Items[0], P->Items[1]);
      }
    }
    push(std::move(D));
    return;
  }
  bool IsSet = Callable->isGlobal("builtins.set") || Callable->isGlobal("builtins.frozenset") ||
               Callable->isGlobal("__builtin__.set") || Callable->isGlobal("__builtin__.frozenset");
  if (IsSet && NoKwargs && Args->Items.size() <= 1) {
    PyValuePtr L = make(Kind::List);
    if (Args->Items.size() == 1) {
      const PyValue &Elems = *Args->Items[0];
      if (!Elems.is(Kind::List) && !Elems.is(Kind::Tuple))
        fail("set built from a " + std::string(PyValue::kindName(Elems.Tag)));
      chargeItems(Elems.Items.size(), sizeof(PyValuePtr)); // a copy: the same list may make many sets
      L->Items = Elems.Items;
    }
    push(std::move(L));
    return;
  }
  PyValuePtr O = make(Kind::Object);
  O->Class = std::move(Callable);
  O->Args = std::move(Args);
  O->Kwargs = std::move(Kwargs);
  push(std::move(O));
}

void Unpickler::appendTo(PyValue &Target, std::vector<PyValuePtr> Items, const char *Op) {
  if (!Target.is(Kind::List) && !Target.is(Kind::Object))
    fail(std::string(Op) + " to a " + PyValue::kindName(Target.Tag));
  chargeItems(Items.size(), sizeof(PyValuePtr));
  for (PyValuePtr &V : Items)
    Target.Items.push_back(std::move(V));
}

void Unpickler::setItemsOn(PyValue &Target, std::vector<PyValuePtr> KV, const char *Op) {
  if (!Target.is(Kind::Dict) && !Target.is(Kind::Object))
    fail(std::string(Op) + " on a " + PyValue::kindName(Target.Tag));
  if (KV.size() % 2)
    fail(std::string(Op) + " with an odd number of keys and values");
  chargeItems(KV.size() / 2, sizeof(PyValue::Entry));
  for (size_t I = 0; I < KV.size(); I += 2)
    Target.Entries.emplace_back(std::move(KV[I]), std::move(KV[I + 1]));
}

// Iterative DFS over every node made: rejects cycles (a list appended to
// itself through the memo) and nesting deeper than UnpickleMaxDepth.
void Unpickler::checkGraph() {
  auto ChildCount = [](const PyValue &V) { return V.Items.size() + 2 * V.Entries.size() + 4; };
  auto Child = [](const PyValue &V, size_t I) -> const PyValue * {
    if (I < V.Items.size())
      return V.Items[I].get();
    I -= V.Items.size();
    if (I < 2 * V.Entries.size())
      return (I % 2 ? V.Entries[I / 2].second : V.Entries[I / 2].first).get();
    I -= 2 * V.Entries.size();
    const PyValuePtr *Fixed[] = {&V.Class, &V.Args, &V.Kwargs, &V.State};
    return Fixed[I]->get();
  };
  enum : uint8_t { White, Gray, Black };
  std::vector<uint8_t> Color(All.size(), White);
  std::vector<uint32_t> Depth(All.size(), 1);
  std::vector<std::pair<uint32_t, size_t>> Work; // node, next child
  for (uint32_t Root = 0; Root < All.size(); ++Root) {
    if (Color[Root] != White)
      continue;
    Color[Root] = Gray;
    Work.push_back({Root, 0});
    while (!Work.empty()) {
      auto &[N, Next] = Work.back();
      const PyValue &V = *All[N];
      if (Next == ChildCount(V)) {
        Color[N] = Black;
        if (Depth[N] > UnpickleMaxDepth)
          fail("value nested deeper than " + std::to_string(UnpickleMaxDepth) + " levels");
        uint32_t Done = N;
        Work.pop_back();
        if (!Work.empty())
          Depth[Work.back().first] = std::max(Depth[Work.back().first], Depth[Done] + 1);
        continue;
      }
      const PyValue *C = Child(V, Next++);
      if (!C)
        continue;
      uint32_t CI = C->Serial;
      if (Color[CI] == Gray)
        fail("recursive value (a container that contains itself)");
      if (Color[CI] == Black) {
        Depth[N] = std::max(Depth[N], Depth[CI] + 1);
        continue;
      }
      Color[CI] = Gray;
      Work.push_back({CI, 0});
    }
  }
}

PyValuePtr Unpickler::run() {
  while (true) {
    OpPos = Pos;
    uint8_t Op = *take(1);
    switch (Op) {
    case 0x80: { // PROTO
      uint8_t P = *take(1);
      if (P > 5)
        fail("unsupported pickle protocol " + std::to_string(P));
      break;
    }
    case 0x95: { // FRAME: only a length prefix for buffered readers
      uint64_t N = le(8);
      if (N > In.size() - Pos)
        fail("frame of " + std::to_string(N) + " bytes runs past the end");
      break;
    }
    case '.': { // STOP
      if (!Marks.empty())
        fail("STOP with an open MARK");
      if (Stack.size() != 1)
        fail("STOP with " + std::to_string(Stack.size()) + " values on the stack");
      if (Pos != In.size())
        fail(std::to_string(In.size() - Pos) + " bytes after STOP");
      checkGraph();
      Committed = true;
      return Stack.back();
    }
    case '(': // MARK
      Marks.push_back(Stack.size());
      if (Marks.size() > MarksHigh) {
        charge(sizeof(size_t));
        MarksHigh = Marks.size();
      }
      break;
    case '0': // POP: an empty frame pops its mark, as Python does
      if (Stack.size() > floor())
        Stack.pop_back();
      else
        popMark("POP");
      break;
    case '1': // POP_MARK
      popMark("POP_MARK");
      break;
    case '2': // DUP
      push(top("DUP"));
      break;

    case 'N':
      if (!NoneNode)
        NoneNode = make(Kind::None);
      push(NoneNode);
      break;
    case 0x88:
    case 0x89:
      push(boolNode(Op == 0x88));
      break;
    case 'I': { // INT: decimal text; "01"/"00" are protocol 0-1 booleans
      std::string_view T = line();
      if (T == "01" || T == "00")
        push(boolNode(T == "01"));
      else
        push(intNode(decimal(T, "INT")));
      break;
    }
    case 'J': // BININT: signed 32-bit
      push(intNode(static_cast<int32_t>(static_cast<uint32_t>(le(4)))));
      break;
    case 'K':
    case 'M':
      push(intNode(static_cast<int64_t>(le(Op == 'K' ? 1 : 2))));
      break;
    case 0x8a:   // LONG1
    case 0x8b: { // LONG4: little-endian two's complement of N bytes
      uint64_t N = Op == 0x8a ? le(1) : le(4);
      if (Op == 0x8b && N > INT32_MAX)
        fail("LONG4 with a negative length");
      if (N > 8)
        fail("integer of " + std::to_string(N) + " bytes does not fit in 64 bits");
      uint64_t U = le(static_cast<unsigned>(N));
      if (N > 0 && N < 8 && (U >> (8 * N - 1)) & 1)
        U |= ~uint64_t(0) << (8 * N); // sign-extend
      push(intNode(static_cast<int64_t>(U)));
      break;
    }
    case 'G': { // BINFLOAT: big-endian IEEE double
      const uint8_t *P = take(8);
      uint64_t U = 0;
      for (int I = 0; I < 8; ++I)
        U = (U << 8) | P[I];
      PyValuePtr V = make(Kind::Float);
      std::memcpy(&V->Float, &U, 8);
      push(std::move(V));
      break;
    }

    case 0x8c:   // SHORT_BINUNICODE
    case 'X':    // BINUNICODE
    case 0x8d:   // BINUNICODE8
    case 'U':    // SHORT_BINSTRING
    case 'T':    // BINSTRING
    case 'C':    // SHORT_BINBYTES
    case 'B':    // BINBYTES
    case 0x8e:   // BINBYTES8
    case 0x96: { // BYTEARRAY8
      uint64_t N;
      switch (Op) {
      case 0x8c:
      case 'U':
      case 'C':
        N = le(1);
        break;
      case 'X':
      case 'B':
        N = le(4);
        break;
      case 'T': {
        int32_t S = static_cast<int32_t>(static_cast<uint32_t>(le(4)));
        if (S < 0)
          fail("BINSTRING with a negative length");
        N = static_cast<uint64_t>(S);
        break;
      }
      default:
        N = le(8);
        break;
      }
      const uint8_t *P = take(N);
      std::string_view Text(reinterpret_cast<const char *>(P), static_cast<size_t>(N));
      bool IsStr = Op == 0x8c || Op == 'X' || Op == 0x8d || Op == 'U' || Op == 'T';
      if (IsStr && N <= MaxInternedStr) {
        push(strNode(Text));
        break;
      }
      PyValuePtr V = make(IsStr ? Kind::Str : Kind::Bytes);
      charge(N);
      V->Text.assign(Text);
      push(std::move(V));
      break;
    }

    case ')': // immutable, so one per pickle
      if (!EmptyTuple)
        EmptyTuple = make(Kind::Tuple);
      push(EmptyTuple);
      break;
    case 't': {
      PyValuePtr T = make(Kind::Tuple);
      T->Items = popMark("TUPLE");
      chargeItems(T->Items.size(), sizeof(PyValuePtr));
      push(std::move(T));
      break;
    }
    case 0x85:
    case 0x86:
    case 0x87: { // TUPLE1..3
      size_t N = Op - 0x84;
      if (Stack.size() < floor() + N)
        fail("TUPLE" + std::to_string(N) + " needs " + std::to_string(N) + " values on the stack");
      PyValuePtr T = make(Kind::Tuple);
      chargeItems(N, sizeof(PyValuePtr));
      T->Items.assign(std::make_move_iterator(Stack.end() - N), std::make_move_iterator(Stack.end()));
      Stack.resize(Stack.size() - N);
      push(std::move(T));
      break;
    }

    case ']':
    case 0x8f: // EMPTY_SET
      push(make(Kind::List));
      break;
    case 'l':
    case 0x91: { // LIST, FROZENSET
      PyValuePtr L = make(Kind::List);
      L->Items = popMark(Op == 'l' ? "LIST" : "FROZENSET");
      chargeItems(L->Items.size(), sizeof(PyValuePtr));
      push(std::move(L));
      break;
    }
    case 'a': { // APPEND
      PyValuePtr V = pop("APPEND");
      appendTo(*top("APPEND"), {std::move(V)}, "APPEND");
      break;
    }
    case 'e':
    case 0x90: { // APPENDS, ADDITEMS
      const char *Name = Op == 'e' ? "APPENDS" : "ADDITEMS";
      std::vector<PyValuePtr> Items = popMark(Name);
      PyValue &Target = *top(Name);
      if (Op == 0x90 && !Target.is(Kind::List))
        fail(std::string("ADDITEMS to a ") + PyValue::kindName(Target.Tag));
      appendTo(Target, std::move(Items), Name);
      break;
    }

    case '}':
      push(make(Kind::Dict));
      break;
    case 'd': {
      PyValuePtr D = make(Kind::Dict);
      setItemsOn(*D, popMark("DICT"), "DICT");
      push(std::move(D));
      break;
    }
    case 's': { // SETITEM
      PyValuePtr V = pop("SETITEM");
      PyValuePtr K = pop("SETITEM");
      std::vector<PyValuePtr> KV;
      KV.push_back(std::move(K));
      KV.push_back(std::move(V));
      setItemsOn(*top("SETITEM"), std::move(KV), "SETITEM");
      break;
    }
    case 'u': { // SETITEMS
      std::vector<PyValuePtr> KV = popMark("SETITEMS");
      setItemsOn(*top("SETITEMS"), std::move(KV), "SETITEMS");
      break;
    }

    case 'c': { // GLOBAL: "module\nname\n"
      std::string Module(line());
      std::string Name(line());
      global(std::move(Module), std::move(Name));
      break;
    }
    case 0x93: { // STACK_GLOBAL
      PyValuePtr Name = pop("STACK_GLOBAL");
      PyValuePtr Module = pop("STACK_GLOBAL");
      if (!Name->is(Kind::Str) || !Module->is(Kind::Str))
        fail("STACK_GLOBAL of something other than two strings");
      global(Module->Text, Name->Text);
      break;
    }
    case 'R': { // REDUCE
      PyValuePtr Args = pop("REDUCE");
      PyValuePtr Callable = pop("REDUCE");
      call(std::move(Callable), std::move(Args), nullptr, "REDUCE");
      break;
    }
    case 0x81: { // NEWOBJ
      PyValuePtr Args = pop("NEWOBJ");
      PyValuePtr Cls = pop("NEWOBJ");
      call(std::move(Cls), std::move(Args), nullptr, "NEWOBJ");
      break;
    }
    case 0x92: { // NEWOBJ_EX
      PyValuePtr Kwargs = pop("NEWOBJ_EX");
      PyValuePtr Args = pop("NEWOBJ_EX");
      PyValuePtr Cls = pop("NEWOBJ_EX");
      call(std::move(Cls), std::move(Args), std::move(Kwargs), "NEWOBJ_EX");
      break;
    }
    case 'b': { // BUILD: __setstate__ / __dict__ update, recorded as State
      PyValuePtr State = pop("BUILD");
      PyValue &Target = *top("BUILD");
      // A Dict here is an OrderedDict with attributes (a state_dict's _metadata).
      if (!Target.is(Kind::Object) && !Target.is(Kind::Dict))
        fail(std::string("BUILD on a ") + PyValue::kindName(Target.Tag));
      Target.State = std::move(State);
      break;
    }
    case 'Q': { // BINPERSID
      PyValuePtr P = make(Kind::PersistentId);
      P->Args = pop("BINPERSID");
      push(std::move(P));
      break;
    }

    case 'p': // PUT
      memoPut(static_cast<uint64_t>(decimal(line(), "PUT index")), "PUT");
      break;
    case 'q':
      memoPut(le(1), "BINPUT");
      break;
    case 'r':
      memoPut(le(4), "LONG_BINPUT");
      break;
    case 0x94: // MEMOIZE
      memoPut(Memo.size(), "MEMOIZE");
      break;
    case 'g': // GET
      memoGet(static_cast<uint64_t>(decimal(line(), "GET index")));
      break;
    case 'h':
      memoGet(le(1));
      break;
    case 'j':
      memoGet(le(4));
      break;

    default: {
      char Buf[8];
      std::snprintf(Buf, sizeof(Buf), "0x%02x", Op);
      fail(std::string("unsupported pickle opcode ") + Buf);
    }
    }
  }
}
} // namespace

PyValuePtr unpickle(std::string_view Bytes, const GlobalAllowList &Allowed, const std::string &Where) {
  Unpickler U(Bytes, Allowed, Where);
  return U.run();
}

// ---- zip -----------------------------------------------------------------------------

namespace {
uint64_t rd(std::string_view B, uint64_t At, unsigned N) {
  uint64_t V = 0;
  for (unsigned I = 0; I < N; ++I)
    V |= static_cast<uint64_t>(static_cast<uint8_t>(B[At + I])) << (8 * I);
  return V;
}

constexpr uint32_t LocalSig = 0x04034b50, CentralSig = 0x02014b50, EndSig = 0x06054b50, End64Sig = 0x06064b50,
                   Locator64Sig = 0x07064b50;
} // namespace

ZipArchive::ZipArchive(std::string_view B, std::string W) : Bytes(B), Where(std::move(W)) {
  auto Fail = [&](const std::string &Msg) -> void { throw Error("error: " + Where + ": " + Msg); };
  const uint64_t Size = B.size();
  // Within [At, At+N) of the archive?
  auto Inside = [&](uint64_t At, uint64_t N) { return At <= Size && N <= Size - At; };

  // End of central directory: 22 bytes plus a comment of at most 64 KiB.
  if (Size < 22)
    Fail("not a zip archive: " + std::to_string(Size) + " bytes, too short for an end of central directory");
  uint64_t Eocd = UINT64_MAX;
  uint64_t Lowest = Size >= 22 + 0xFFFF ? Size - 22 - 0xFFFF : 0;
  for (uint64_t At = Size - 22 + 1; At-- > Lowest;) {
    if (rd(B, At, 4) == EndSig && At + 22 + rd(B, At + 20, 2) == Size) {
      Eocd = At;
      break;
    }
  }
  if (Eocd == UINT64_MAX)
    Fail("not a zip archive (no end of central directory record; truncated, or a legacy torch.save file?)");
  if (rd(B, Eocd + 4, 2) != 0 || rd(B, Eocd + 6, 2) != 0)
    Fail("multi-disk zip archives are not supported");
  uint64_t Count = rd(B, Eocd + 10, 2);
  uint64_t CdSize = rd(B, Eocd + 12, 4);
  uint64_t CdOffset = rd(B, Eocd + 16, 4);

  // ZIP64: the locator sits right before the end record. Its signature
  // could also occur by chance in a plain archive, so a locator that does
  // not check out only matters when the 32-bit fields are saturated.
  bool Saturated = CdSize == 0xFFFFFFFF || CdOffset == 0xFFFFFFFF;
  if (Eocd >= 20 && rd(B, Eocd - 20, 4) == Locator64Sig) {
    uint64_t Rec = rd(B, Eocd - 20 + 8, 8);
    if (Inside(Rec, 56) && Rec + 56 <= Eocd - 20 && rd(B, Rec, 4) == End64Sig) {
      Count = rd(B, Rec + 32, 8);
      CdSize = rd(B, Rec + 40, 8);
      CdOffset = rd(B, Rec + 48, 8);
      Saturated = false;
    }
  }
  if (Saturated)
    Fail("ZIP64 archive without a valid ZIP64 end of central directory record");
  if (!Inside(CdOffset, CdSize) || CdOffset + CdSize > Eocd)
    Fail("central directory (offset " + std::to_string(CdOffset) + ", " + std::to_string(CdSize) +
         " bytes) runs past the end of the archive");
  // Each central entry takes at least 46 bytes; this bounds the reserve too.
  if (Count > CdSize / 46)
    Fail("central directory claims " + std::to_string(Count) + " entries in " + std::to_string(CdSize) + " bytes");

  Entries.reserve(static_cast<size_t>(Count));
  uint64_t At = CdOffset;
  const uint64_t CdEnd = CdOffset + CdSize;
  for (uint64_t I = 0; I < Count; ++I) {
    if (At + 46 > CdEnd || rd(B, At, 4) != CentralSig)
      Fail("central directory entry " + std::to_string(I) + " is malformed");
    uint64_t Flags = rd(B, At + 8, 2), Method = rd(B, At + 10, 2);
    uint32_t Crc = static_cast<uint32_t>(rd(B, At + 16, 4));
    uint64_t CSize = rd(B, At + 20, 4), USize = rd(B, At + 24, 4);
    uint64_t NameLen = rd(B, At + 28, 2), ExtraLen = rd(B, At + 30, 2), CommentLen = rd(B, At + 32, 2);
    uint64_t Lho = rd(B, At + 42, 4);
    if (At + 46 + NameLen + ExtraLen + CommentLen > CdEnd)
      Fail("central directory entry " + std::to_string(I) + " runs past the central directory");
    std::string Name(B.substr(At + 46, NameLen));
    // ZIP64 extended information: only the fields whose 32/16-bit value is
    // saturated are present, in this order.
    uint64_t X = At + 46 + NameLen, XEnd = X + ExtraLen;
    while (X + 4 <= XEnd) {
      uint64_t Id = rd(B, X, 2), Len = rd(B, X + 2, 2);
      if (X + 4 + Len > XEnd)
        Fail("entry '" + Name + "': extra field runs past its header");
      if (Id == 0x0001) {
        uint64_t F = X + 4, FEnd = F + Len;
        auto Next = [&](uint64_t &V) {
          if (F + 8 > FEnd)
            Fail("entry '" + Name + "': short ZIP64 extra field");
          V = rd(B, F, 8);
          F += 8;
        };
        if (USize == 0xFFFFFFFF)
          Next(USize);
        if (CSize == 0xFFFFFFFF)
          Next(CSize);
        if (Lho == 0xFFFFFFFF)
          Next(Lho);
      }
      X += 4 + Len;
    }
    At += 46 + NameLen + ExtraLen + CommentLen;

    if (Method != 0)
      Fail("entry '" + Name + "' is compressed (method " + std::to_string(Method) +
           "); torch.save archives store entries uncompressed");
    if (Flags & 1)
      Fail("entry '" + Name + "' is encrypted");
    if (CSize != USize)
      Fail("entry '" + Name + "' is stored but its sizes differ (" + std::to_string(CSize) + " vs " +
           std::to_string(USize) + ")");
    if (!Inside(Lho, 30) || rd(B, Lho, 4) != LocalSig)
      Fail("entry '" + Name + "': local header at offset " + std::to_string(Lho) +
           " is past the end of the archive or malformed");
    uint64_t LNameLen = rd(B, Lho + 26, 2), LExtraLen = rd(B, Lho + 28, 2);
    uint64_t Data = Lho + 30 + LNameLen + LExtraLen;
    if (!Inside(Lho + 30, LNameLen) || B.substr(Lho + 30, LNameLen) != Name)
      Fail("entry '" + Name + "': local header names a different file");
    if (!Inside(Data, USize))
      Fail("entry '" + Name + "' (" + std::to_string(USize) + " bytes at offset " + std::to_string(Data) +
           ") runs past the end of the archive (" + std::to_string(Size) + " bytes)");
    Entries.push_back({std::move(Name), Data, USize, Crc});
  }
  for (size_t I = 0; I < Entries.size(); ++I)
    if (!ByName.emplace(Entries[I].Name, I).second)
      Fail("entry '" + Entries[I].Name + "' appears twice");
}

const ZipArchive::Entry *ZipArchive::find(std::string_view Name) const {
  auto It = ByName.find(Name);
  return It == ByName.end() ? nullptr : &Entries[It->second];
}

std::string_view ZipArchive::read(const Entry &E) const {
  std::string_view Data = Bytes.substr(static_cast<size_t>(E.DataOffset), static_cast<size_t>(E.Size));
  uint32_t C = crc32(reinterpret_cast<const uint8_t *>(Data.data()), Data.size());
  if (C != E.Crc32)
    throw Error("error: " + Where + ": entry '" + E.Name + "' fails its CRC-32 check (corrupt archive)");
  return Data;
}

// ---- torch.save ----------------------------------------------------------------------

namespace {
[[noreturn]] void failAt(const std::string &Where, const std::string &Msg) {
  throw Error("error: " + Where + ": " + Msg);
}

bool mulOverflows(int64_t A, int64_t B, int64_t &Out) { return __builtin_mul_overflow(A, B, &Out); }

std::string shapeList(const std::vector<int64_t> &D) {
  std::string S = "[";
  for (size_t I = 0; I < D.size(); ++I)
    S += (I ? ", " : "") + std::to_string(D[I]);
  return S + "]";
}

std::vector<int64_t> intTuple(const PyValue &V, const std::string &Where, const char *What) {
  if (!V.is(Kind::Tuple) && !V.is(Kind::List) && !V.isObjectOf("torch.Size"))
    failAt(Where, std::string(What) + " is a " + PyValue::kindName(V.Tag) + ", not a tuple of ints");
  const PyValue *T = &V;
  if (V.is(Kind::Object)) { // torch.Size((dims,))
    if (!V.Args || V.Args->Items.size() != 1)
      failAt(Where, std::string(What) + ": malformed torch.Size");
    T = V.Args->Items[0].get();
    if (!T->is(Kind::Tuple) && !T->is(Kind::List))
      failAt(Where, std::string(What) + ": malformed torch.Size");
  }
  std::vector<int64_t> Out;
  for (const PyValuePtr &I : T->Items) {
    if (!I->is(Kind::Int))
      failAt(Where, std::string(What) + " holds a " + PyValue::kindName(I->Tag) + ", not an int");
    Out.push_back(I->Int);
  }
  return Out;
}

/// Builds the contiguous tensor that _rebuild_tensor_v2(\p Args) or, with
/// \p V3, _rebuild_tensor_v3(\p Args) describes. v3 is what torch.save
/// writes for dtypes without a legacy storage class (float8, ...): an
/// untyped storage sized in bytes, and the dtype as the seventh argument.
TensorRecord rebuildTensor(const PyValue &Args, bool V3, const ZipArchive &Zip, const std::string &Folder,
                           const std::string &Where, bool Borrow) {
  // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, dtype (v3)][, metadata])
  const char *Fn = V3 ? "_rebuild_tensor_v3" : "_rebuild_tensor_v2";
  if (!Args.is(Kind::Tuple) || Args.Items.size() < (V3 ? 7u : 4u))
    failAt(Where, std::string(Fn) + " with malformed arguments " + Args.repr());
  const PyValue &Pid = *Args.Items[0];
  if (!Pid.is(Kind::PersistentId) || !Pid.Args || !Pid.Args->is(Kind::Tuple) || Pid.Args->Items.size() != 5)
    failAt(Where, "tensor storage is not a ('storage', class, key, location, numel) persistent id: " + Pid.repr());
  const auto &P = Pid.Args->Items;
  if (!P[0]->is(Kind::Str) || P[0]->Text != "storage" || !P[1]->is(Kind::Global) || !P[2]->is(Kind::Str) ||
      !P[4]->is(Kind::Int))
    failAt(Where, "malformed storage persistent id " + Pid.repr());
  std::optional<DType> Type;
  if (V3) {
    const PyValue &D = *Args.Items[6];
    if (!P[1]->isGlobal("torch.storage.UntypedStorage"))
      failAt(Where, "_rebuild_tensor_v3 of a '" + P[1]->qualifiedName() + "', not an UntypedStorage");
    if (!D.is(Kind::Global) || D.Text != "torch")
      failAt(Where, "_rebuild_tensor_v3 with dtype " + D.repr(80));
    Type = dtypeFromTorch(D.Name);
    if (!Type)
      failAt(Where, "unsupported dtype 'torch." + D.Name + "'");
  } else {
    if (P[1]->Text == "torch")
      Type = dtypeFromStorage(P[1]->Name);
    if (!Type)
      failAt(Where, "unsupported storage class '" + P[1]->qualifiedName() + "'");
  }
  const std::string &Key = P[2]->Text;
  size_t Elem = dtypeSize(*Type);
  int64_t StorageNumel = P[4]->Int, StorageBytes = P[4]->Int;
  if (StorageNumel < 0 || (V3 && StorageBytes % static_cast<int64_t>(Elem) != 0) ||
      (!V3 && mulOverflows(StorageNumel, static_cast<int64_t>(Elem), StorageBytes)))
    failAt(Where, "storage '" + Key + "' has a bad size " + std::to_string(P[4]->Int));
  if (V3)
    StorageNumel = StorageBytes / static_cast<int64_t>(Elem);

  std::string EntryName = Folder + "/data/" + Key;
  const ZipArchive::Entry *E = Zip.find(EntryName);
  if (!E)
    failAt(Where, "storage '" + Key + "' has no archive entry '" + EntryName + "'");
  if (E->Size != static_cast<uint64_t>(StorageBytes))
    failAt(Where, "entry '" + EntryName + "' holds " + std::to_string(E->Size) + " bytes, but its storage has " +
                      std::to_string(StorageNumel) + " " + std::string(torchName(*Type)) + " elements");

  TensorRecord T;
  T.Type = *Type;
  if (!Args.Items[1]->is(Kind::Int))
    failAt(Where, "tensor storage offset is a " + std::string(PyValue::kindName(Args.Items[1]->Tag)));
  T.StorageOffset = Args.Items[1]->Int;
  T.Shape = intTuple(*Args.Items[2], Where, "tensor shape");
  T.Strides = intTuple(*Args.Items[3], Where, "tensor strides");
  if (T.Shape.size() != T.Strides.size())
    failAt(Where, "tensor has " + std::to_string(T.Shape.size()) + " dims but " + std::to_string(T.Strides.size()) +
                      " strides");
  int64_t Numel = 1, MaxIndex = T.StorageOffset;
  if (T.StorageOffset < 0)
    failAt(Where, "negative storage offset");
  for (size_t D = 0; D < T.Shape.size(); ++D) {
    if (T.Shape[D] < 0 || T.Strides[D] < 0)
      failAt(Where, "negative size or stride in dim " + std::to_string(D));
    if (mulOverflows(Numel, T.Shape[D], Numel))
      failAt(Where, "tensor shape overflows");
  }
  int64_t OutBytes;
  if (mulOverflows(Numel, static_cast<int64_t>(Elem), OutBytes))
    failAt(Where, "tensor shape overflows");
  if (T.StorageOffset > StorageNumel)
    failAt(Where, "storage offset " + std::to_string(T.StorageOffset) + " is past the end of storage '" + Key + "' (" +
                      std::to_string(StorageNumel) + " elements)");
  // Gathering copies every element: one that reads its storage's elements
  // more than once (a stride-0 broadcast, overlapping strides) could turn
  // a few bytes of file into gigabytes. torch.save of a checkpoint's
  // tensors never holds such views.
  if (Numel > StorageNumel)
    failAt(Where, "shape " + shapeList(T.Shape) + " with strides " + shapeList(T.Strides) + " has " +
                      std::to_string(Numel) + " elements, more than the " + std::to_string(StorageNumel) +
                      " of its storage '" + Key + "' (an expanded or overlapping view; save a copy)");
  if (Numel > 0) {
    for (size_t D = 0; D < T.Shape.size(); ++D) {
      int64_t Reach;
      if (mulOverflows(T.Shape[D] - 1, T.Strides[D], Reach) || __builtin_add_overflow(MaxIndex, Reach, &MaxIndex))
        failAt(Where, "tensor strides overflow");
    }
    if (MaxIndex >= StorageNumel)
      failAt(Where, "tensor (offset " + std::to_string(T.StorageOffset) + ") reaches element " +
                        std::to_string(MaxIndex) + " of a storage of " + std::to_string(StorageNumel));
  }

  std::string_view Storage = Zip.read(*E);
  const char *Src = Storage.data();
  // Contiguous (the usual case: torch.save of a clone) is one copy, or none
  // when the caller keeps the archive's bytes alive.
  bool Contiguous = true;
  int64_t Expect = 1;
  for (size_t D = T.Shape.size(); D-- > 0;) {
    if (T.Shape[D] != 1 && T.Strides[D] != Expect)
      Contiguous = false;
    Expect *= T.Shape[D];
  }
  if (Contiguous && Borrow) {
    T.Borrowed = reinterpret_cast<const uint8_t *>(Src + T.StorageOffset * Elem);
    return T;
  }
  T.Bytes.resize(static_cast<size_t>(OutBytes));
  if (Numel == 0)
    return T;
  if (Contiguous) {
    std::memcpy(T.Bytes.data(), Src + T.StorageOffset * Elem, static_cast<size_t>(OutBytes));
    return T;
  }
  // Gather element by element with an odometer over the indices.
  size_t Rank = T.Shape.size();
  std::vector<int64_t> Index(Rank, 0);
  int64_t SrcElem = T.StorageOffset;
  uint8_t *Dst = T.Bytes.data();
  for (int64_t N = 0; N < Numel; ++N) {
    std::memcpy(Dst + N * Elem, Src + SrcElem * Elem, Elem);
    for (size_t D = Rank; D-- > 0;) {
      if (++Index[D] < T.Shape[D]) {
        SrcElem += T.Strides[D];
        break;
      }
      SrcElem -= (T.Shape[D] - 1) * T.Strides[D];
      Index[D] = 0;
    }
  }
  return T;
}
} // namespace

PyValuePtr readTorchSave(std::string_view Bytes, const std::string &Where, const GlobalAllowList &Allowed,
                         bool Borrow) {
  ZipArchive Zip(Bytes, Where);
  // torch.save puts everything under one folder whose name is free
  // ('archive' for file objects, the file's stem for paths).
  const ZipArchive::Entry *Pkl = nullptr;
  for (const ZipArchive::Entry &E : Zip.entries()) {
    size_t Slash = E.Name.find('/');
    if (Slash != std::string::npos && Slash > 0 && E.Name.compare(Slash, std::string::npos, "/data.pkl") == 0) {
      if (Pkl)
        failAt(Where, "two pickles in one archive: '" + Pkl->Name + "' and '" + E.Name + "'");
      Pkl = &E;
    }
  }
  if (!Pkl)
    failAt(Where, "no '<folder>/data.pkl' in the archive: not a torch.save file");
  std::string Folder = Pkl->Name.substr(0, Pkl->Name.find('/'));
  if (const ZipArchive::Entry *Order = Zip.find(Folder + "/byteorder")) {
    std::string_view O = Zip.read(*Order);
    if (O != "little")
      failAt(Where, "byte order '" + std::string(O.substr(0, 16)) + "' is not supported (only little-endian)");
  }
  PyValuePtr Root = unpickle(Zip.read(*Pkl), Allowed, Where + ": " + Pkl->Name);

  // Turn tensor objects into Tensor leaves in place, so shared references
  // (one tensor reached twice through the memo) stay shared.
  // Each node goes with the last string dict key on its way from the root,
  // so that messages name the tensor ('model' entry) at fault.
  std::unordered_set<const PyValue *> Seen;
  std::vector<std::pair<PyValue *, const std::string *>> Work{{Root.get(), nullptr}};
  while (!Work.empty()) {
    auto [V, Name] = Work.back();
    Work.pop_back();
    if (!V || !Seen.insert(V).second)
      continue;
    bool V3 = V->isObjectOf("torch._utils._rebuild_tensor_v3");
    if (V3 || V->isObjectOf("torch._utils._rebuild_tensor_v2")) {
      std::string TensorWhere = Name ? Where + ": tensor '" + *Name + "'" : Where;
      if (V->State || V->Kwargs || !V->Items.empty() || !V->Entries.empty())
        failAt(TensorWhere, "tensor with extra attributes (a tensor subclass?) is not supported");
      auto T = std::make_shared<TensorRecord>(rebuildTensor(*V->Args, V3, Zip, Folder, TensorWhere, Borrow));
      V->Tag = Kind::Tensor;
      V->Tensor = std::move(T);
      V->Class.reset();
      V->Args.reset();
      continue;
    }
    for (const PyValuePtr &C : V->Items)
      Work.push_back({C.get(), Name});
    for (const PyValue::Entry &E : V->Entries) {
      Work.push_back({E.first.get(), Name});
      Work.push_back({E.second.get(), E.first && E.first->is(Kind::Str) ? &E.first->Text : Name});
    }
    for (const PyValuePtr *C : {&V->Class, &V->Args, &V->Kwargs, &V->State})
      Work.push_back({C->get(), Name});
  }
  return Root;
}

TensorRecord readTorchSaveTensor(std::string_view Bytes, const std::string &Where, bool Borrow) {
  PyValuePtr Root = readTorchSave(Bytes, Where, TorchSaveGlobals, Borrow);
  if (!Root->is(Kind::Tensor))
    failAt(Where, "expected one tensor, the archive holds a " + std::string(PyValue::kindName(Root->Tag)));
  return *Root->Tensor;
}

} // namespace bridge
