//===- Unpickle.h - reading Python pickles and torch.save archives -*- C++ -*-===//
//
// The read side of Pickle.h. A checkpoint's metadata and every torch.save
// archive in it are Python pickles; reading them must never run anything a
// file names. So the unpickler here is restricted: it turns the opcodes into
// a tree of PyValue nodes (classes and functions stay names, calls stay
// "object of class X built from these arguments"), every global a pickle
// names must be in an allow-list the caller chooses, and every length is
// checked against the input. torch.save zip archives are read the same way:
// entries are located through the central directory with every offset
// checked, and the tensors in data.pkl come back as TensorRecord leaves
// holding contiguous little-endian bytes. See
// shared/reference/megatron-checkpoint-format.md sections 2.3, 2.5 and 6.
//
//===----------------------------------------------------------------------===//
#ifndef BRIDGE_UNPICKLE_H
#define BRIDGE_UNPICKLE_H

#include "bridge/DType.h"

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace bridge {

/// "module.name" of every global a pickle may name; anything else is an
/// error. Transparent comparison, so lookups take string_views.
using GlobalAllowList = std::set<std::string, std::less<>>;

/// Globals of a DCP '.metadata' (torch 2.x, Megatron-Core 0.x): the
/// torch.distributed.checkpoint dataclasses, MCore's metadata subclasses,
/// torch.Size, the torch dtypes, layouts and memory formats, and the few
/// helpers (torch.serialization._get_layout, pathlib.PosixPath,
/// collections.OrderedDict) their pickles refer to.
extern const GlobalAllowList DcpMetadataGlobals;

/// Globals of a torch.save data.pkl as Megatron writes them (tensor records,
/// byte objects, common.pt): torch._utils._rebuild_tensor_v2 with the
/// legacy torch.<X>Storage classes of every DType, _rebuild_tensor_v3 with
/// torch.storage.UntypedStorage (float8), the torch dtypes,
/// collections.OrderedDict, argparse.Namespace, set/frozenset (as
/// builtins.* and protocol 2's __builtin__.*).
extern const GlobalAllowList TorchSaveGlobals;

/// TorchSaveGlobals and what Megatron-LM's legacy model_optim_rng.pt holds
/// beside the model: numpy's RNG state and every name under the package
/// 'megatron' (an entry 'pkg.*' admits a whole package).
extern const GlobalAllowList LegacyCheckpointGlobals;
/// A tensor read from a torch.save archive.
struct TensorRecord {
  DType Type = DType::F32;
  std::vector<int64_t> Shape;
  /// Strides and storage offset (in elements) as the pickle gave them; they
  /// describe the source only: Bytes is already gathered through them.
  std::vector<int64_t> Strides;
  int64_t StorageOffset = 0;
  /// The elements, row-major and contiguous, little-endian.
  std::vector<uint8_t> Bytes;
  /// Instead of Bytes, when read with Borrow and stored contiguously: the
  /// elements where they lie in the archive's bytes (no copy).
  const uint8_t *Borrowed = nullptr;
  const uint8_t *data() const { return Borrowed ? Borrowed : Bytes.data(); }

  /// Elements of the tensor (1 for a 0-d tensor).
  int64_t numel() const;
};

struct PyValue;
using PyValuePtr = std::shared_ptr<PyValue>;

/// One node of an unpickled value. Nodes are shared where the pickle shared
/// them (memo references), exactly as Python objects would be; immutable
/// values (None, bools, equal ints and short strings, the empty tuple, the
/// same global) may be shared too. A finished value has no cycles and is at
/// most UnpickleMaxDepth deep.
struct PyValue {
  enum class Kind : uint8_t {
    None,
    Bool,
    Int,
    Float,
    Str, ///< also the py2 'str' of BINSTRING (raw bytes)
    Bytes,
    Tuple,
    List,         ///< also sets and frozensets, in pickle order
    Dict,         ///< also collections.OrderedDict
    Global,       ///< a class or function, by name
    Object,       ///< the result of REDUCE / NEWOBJ / NEWOBJ_EX on a Global
    PersistentId, ///< BINPERSID: what the pickle handed to persistent_load
    Tensor,       ///< only from readTorchSave: a rebuilt tensor
  };
  using Entry = std::pair<PyValuePtr, PyValuePtr>;

  Kind Tag = Kind::None;
  bool Bool = false;
  /// Creation number within its pickle: distinct for distinct nodes, so a
  /// cheap key for visited sets.
  uint32_t Serial = 0;
  int64_t Int = 0;
  double Float = 0;
  std::string Text;              ///< Str, Bytes: the payload; Global: the module
  std::string Name;              ///< Global: the name inside the module
  std::vector<PyValuePtr> Items; ///< Tuple, List; Object: items APPENDed to it
  /// Dict: key/value pairs in pickle order (keys of any kind; a key set
  /// twice appears twice, find() returns the last as Python would keep it).
  /// Object: items SETITEMed on it (dict subclasses).
  std::vector<Entry> Entries;
  PyValuePtr Class;                           ///< Object: the Global it was built from
  PyValuePtr Args;                            ///< Object: constructor/callable args (a Tuple); PersistentId: the id
  PyValuePtr Kwargs;                          ///< Object: NEWOBJ_EX keyword args (a Dict), else null
  PyValuePtr State;                           ///< Object, Dict: what BUILD gave it (usually a Dict), else null
  std::shared_ptr<const TensorRecord> Tensor; ///< Tensor

  explicit PyValue(Kind K = Kind::None) : Tag(K) {}

  /// Whether this node is of kind \p K.
  bool is(Kind K) const { return Tag == K; }
  /// A Global named \p Qualified ("module.name").
  bool isGlobal(std::string_view Qualified) const;
  /// An Object built from the Global \p Qualified.
  bool isObjectOf(std::string_view Qualified) const;
  /// "module.name" of a Global, or of an Object's class; "" otherwise.
  std::string qualifiedName() const;
  /// The value of the Str key \p Key of a Dict, or of an Object's State
  /// dict (dataclass fields); null when absent.
  const PyValue *find(std::string_view Key) const;
  /// A short Python-like rendering for messages, cut at about \p Limit chars.
  std::string repr(size_t Limit = 200) const;
  /// The Python-ish name of a kind ("dict", "tuple", ...), for messages.
  static const char *kindName(Kind K);
};

/// Nesting limit of an unpickled value, so that consumers may recurse.
constexpr unsigned UnpickleMaxDepth = 1000;

/// The work and memory one unpickle() may spend are bounded by what its
/// input holds: a few megabytes of EMPTY_LIST, MARK/LIST, MEMOIZE or
/// set(memo GET) opcodes used to build gigabytes of nodes (issue 17, 10a).
///
/// Value nodes: at most one per UnpickleBytesPerNode bytes of input, plus
/// UnpickleMinNodes. Every node Python's pickler (or ours) writes costs an
/// opcode and a memo entry or its contents: real files spend 10 (a
/// DeepSeek-V3-like DCP .metadata written by Python) to 30 (ours) bytes
/// per node, so 4 leaves a margin of 2.5 and holds a hostile pickle to a
/// quarter of the nodes it asks for.
constexpr uint64_t UnpickleBytesPerNode = 4;
constexpr uint64_t UnpickleMinNodes = uint64_t(1) << 16;
/// What the unpickler counts for each node: the PyValue with its
/// shared_ptr control block (one allocation) and allocator overhead, its
/// slot in the unpickler's node table and checkGraph's bookkeeping. Items,
/// dict entries, text, memo entries and the stack's high-water mark are
/// counted on top, at their own size.
constexpr uint64_t UnpickleNodeBytes = sizeof(PyValue) + 64;
/// Memory: at most UnpickleMinMemory + UnpickleMemoryPerByte bytes per
/// input byte, and never more than UnpickleMaxMemory. Real files need
/// about 36 bytes of memory per input byte (measured peak RSS of a 32 MB
/// DeepSeek-V3-like .metadata: 1.2 GB, 3.2 M nodes); 64 leaves room. The
/// absolute cap fits a DeepSeek-V3 checkpoint of 2048 ranks with its
/// optimizer state (about 600 K chunks, a .metadata of about 100 MB, about
/// 3.6 GB unpickled) four times over.
constexpr uint64_t UnpickleMemoryPerByte = 64;
constexpr uint64_t UnpickleMinMemory = uint64_t(64) << 20;
constexpr uint64_t UnpickleMaxMemory = uint64_t(16) << 30;

/// Unpickles \p Bytes, one pickle of protocol 2 to 5 (the opcodes Python
/// and torch emit, plus the INT/PUT/GET text forms; not the protocol-0 text
/// strings, floats and persistent ids, nor out-of-band buffers; nothing may
/// follow STOP), without executing anything. Every GLOBAL / STACK_GLOBAL
/// must be in \p Allowed. collections.OrderedDict becomes a Dict,
/// builtins.set and frozenset a List. Throws bridge::Error "error: <Where>:
/// ..." on forbidden globals, truncated or malformed input, recursive or
/// too deeply nested values, and input that would make more nodes or take
/// more memory than the budgets above allow.
PyValuePtr unpickle(std::string_view Bytes, const GlobalAllowList &Allowed, const std::string &Where);

/// A zip archive as torch.save writes it (entries STORED, ZIP64 where
/// needed), indexed through its central directory. Every entry's local
/// header and payload are checked to lie inside the archive.
class ZipArchive {
public:
  struct Entry {
    std::string Name;
    uint64_t DataOffset = 0; ///< of the payload, from the archive's start
    uint64_t Size = 0;
    uint32_t Crc32 = 0;
  };

  /// Indexes \p Bytes, which is not copied and must outlive this object.
  /// Throws bridge::Error naming \p Where.
  ZipArchive(std::string_view Bytes, std::string Where);

  /// Every entry, in central directory order.
  const std::vector<Entry> &entries() const { return Entries; }
  /// Null when absent.
  const Entry *find(std::string_view Name) const;
  /// The payload of \p E, after checking its CRC-32.
  std::string_view read(const Entry &E) const;
  /// The name used in messages.
  const std::string &where() const { return Where; }

private:
  std::string_view Bytes;
  std::string Where;
  std::vector<Entry> Entries;
  std::map<std::string, size_t, std::less<>> ByName; ///< index into Entries
};

/// Reads a torch.save archive: '<folder>/data.pkl' (any single top-level
/// folder name) unpickled with \p Allowed, every storage persistent id
/// ('storage', torch.<X>Storage, key, location, numel) resolved to
/// '<folder>/data/<key>', and every torch._utils._rebuild_tensor_v2 / _v3
/// object replaced by a Tensor node. Strided tensors are gathered into
/// contiguous bytes. Throws bridge::Error naming \p Where.
/// With \p Borrow, contiguous tensors point into \p Bytes (TensorRecord::
/// Borrowed), which must then outlive them.
PyValuePtr readTorchSave(std::string_view Bytes, const std::string &Where,
                         const GlobalAllowList &Allowed = TorchSaveGlobals, bool Borrow = false);

/// The one tensor that a torch.save archive of a single tensor holds (a DCP
/// tensor record); throws if the archive holds anything else.
TensorRecord readTorchSaveTensor(std::string_view Bytes, const std::string &Where, bool Borrow = false);

} // namespace bridge

#endif
