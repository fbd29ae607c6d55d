"""AutoBridge: Megatron-Bridge's calls, run by this project's C++ runtime.

Names and call shapes follow Megatron-Bridge's ``megatron.bridge.AutoBridge``
so that switching is a changed import. The work is done in ``bridge._C``
(runtime/lib/exec/Live.cpp): the plan and the ops of the compiled mapping,
the slices each rank holds, and the export's collectives over the model's
own process groups, bucket by bucket.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class BridgeError(ValueError):
    """What the runtime refused, with its message (file, tensor, parameter)."""


def _native():
    # Imported when first needed: the builders in megatron_model need no
    # extension, and the test suite imports them from the source tree.
    from . import _C

    return _C


def _config_text(config: Any) -> str:
    if isinstance(config, (str, os.PathLike)):
        path = Path(config)
        if path.is_dir():
            path = path / "config.json"
        return path.read_text()
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    return json.dumps(config)


def _chunks(model) -> list:
    chunks = model if isinstance(model, (list, tuple)) else [model]
    out = []
    for chunk in chunks:
        # DDP and Float16Module wrap the model in .module.
        while hasattr(chunk, "module") and not hasattr(chunk, "decoder"):
            chunk = chunk.module
        out.append(chunk)
    return out


_LAYER = re.compile(r"^((?:.*\.)?decoder\.layers\.)(\d+)\.")


def _local_tensors(model) -> list[tuple[str, Any]]:
    """This rank's parameters and persistent buffers, named as the model's
    state_dict names them with each decoder layer's index made global (its
    layer_number - 1), so that virtual pipeline chunks and pipeline stages
    name the same layer alike."""
    out = []
    for chunk in _chunks(model):
        stacks: dict[str, Any] = {}  # 'decoder.layers.' (a VLM's 'language_model.decoder.layers.') -> its layers
        for name, value in chunk.state_dict(keep_vars=True).items():
            if name.endswith("_extra_state") or value is None or not hasattr(value, "dtype"):
                continue
            m = _LAYER.match(name)
            if m:
                if m.group(1) not in stacks:
                    try:
                        stacks[m.group(1)] = chunk.get_submodule(m.group(1)[:-1])
                    except AttributeError:
                        stacks[m.group(1)] = None
                layers = stacks[m.group(1)]
                number = getattr(layers[int(m.group(2))], "layer_number", None) if layers is not None else None
                if number is not None:
                    name = f"{m.group(1)}{number - 1}.{name[m.end():]}"
            out.append((name, value))
    return out


# How many parameters, buffers and submodules any module of this process has
# registered (assigned) since the bridge started watching: a kept live model
# is stale once its model may hold another object than it named.
_REGISTRATIONS = [0]
_WATCHING: list[Any] = []


def _watch_registrations() -> None:
    if _WATCHING:
        return
    from torch.nn.modules import module

    def bump(*_: Any) -> None:
        _REGISTRATIONS[0] += 1

    _WATCHING.extend([module.register_module_parameter_registration_hook(bump),
                      module.register_module_buffer_registration_hook(bump),
                      module.register_module_module_registration_hook(bump)])


def _local_spec(names: list[str]) -> bool:
    """A model built without Transformer Engine names its norms apart
    (input_layernorm) where TE fuses them into the next linear layer."""
    return not any("layer_norm_weight" in n for n in names)


def _parallel_state():
    from megatron.core import parallel_state as ps

    def group(get):
        try:
            return get()
        except (AssertionError, AttributeError, RuntimeError):
            return None

    sizes = dict(
        tp=ps.get_tensor_model_parallel_world_size(),
        pp=ps.get_pipeline_model_parallel_world_size(),
        ep=ps.get_expert_model_parallel_world_size(),
        etp=ps.get_expert_tensor_parallel_world_size(),
    )
    ranks = dict(
        tp=ps.get_tensor_model_parallel_rank(),
        pp=ps.get_pipeline_model_parallel_rank(),
        ep=ps.get_expert_model_parallel_rank(),
        etp=ps.get_expert_tensor_parallel_rank(),
    )
    groups = dict(
        tp=group(ps.get_tensor_model_parallel_group),
        pp=group(ps.get_pipeline_model_parallel_group),
        ep=group(ps.get_expert_model_parallel_group),
        etp=group(ps.get_expert_tensor_parallel_group),
    )
    return sizes, ranks, groups


def _adapters_of(model, names: list[str], pp_group=None):
    """(dim, alpha, target modules) of the LoRA adapters the model carries,
    as Megatron-Bridge's LoRA wraps modules (`<module>.adapter.linear_in`,
    `.linear_out`; the adapter module's `dim` and `alpha`), or None. `names`:
    every stage's parameter names (the targets are the whole model's);
    `pp_group`: the pipeline group, over which every stage's (dim, alpha)
    is gathered, so that each builds the same plan."""
    targets = {n[: -len(".adapter.linear_in.weight")].rsplit(".", 1)[-1]
               for n in names if n.endswith(".adapter.linear_in.weight")}
    specs = set()
    for chunk in _chunks(model):
        for module in chunk.modules():
            adapter = getattr(module, "adapter", None)
            if adapter is None or not hasattr(adapter, "linear_in"):
                continue
            dim, alpha = getattr(adapter, "dim", None), getattr(adapter, "alpha", None)
            if dim is None or alpha is None:
                raise BridgeError("a LoRA adapter module has no dim and alpha attributes (Megatron-Bridge's "
                                  "ParallelLinearAdapter has both): the adapters' scale is unknown")
            specs.add((int(dim), float(alpha)))
    if pp_group is not None:
        import torch.distributed as dist

        stages: list = [None] * dist.get_world_size(group=pp_group)
        dist.all_gather_object(stages, sorted(specs), group=pp_group)
        specs = {tuple(s) for stage in stages for s in stage}
    if not targets and not specs:
        return None
    if len(specs) != 1 or not targets:
        raise BridgeError(f"the model's LoRA adapters have different (dim, alpha): {sorted(specs)}; "
                          "the live bridge takes one of each, as Megatron-Bridge's LoRA")
    dim, alpha = specs.pop()
    return dim, alpha, sorted(targets)


class AutoBridge:
    """One HF checkpoint (config and weights, memory-mapped) and its mapping."""

    def __init__(self, hf):
        self._hf = hf
        self.last_load: dict[str, Any] = {}
        self._live_cache: tuple | None = None  # (fingerprint, live model, groups): see _live_model

    # -- the checkpoint and its model ------------------------------------------------------

    @classmethod
    def from_hf_pretrained(cls, path: str | os.PathLike, **_: Any) -> "AutoBridge":
        """The HF checkpoint in `path` (safetensors and config.json). Its
        mapping, config and every tensor's plan are checked here."""
        C = _native()
        try:
            return cls(C.HFModel(str(path)))
        except ValueError as e:
            raise BridgeError(str(e)) from None

    @classmethod
    def supports(cls, config: Any) -> bool:
        """Whether a mapping serves this HF config (a dict, a transformers
        config, a config.json path or a checkpoint directory)."""
        try:
            _native().mapping_for(_config_text(config))
            return True
        except ValueError:
            return False

    @classmethod
    def list_supported_models(cls) -> list[str]:
        """The families (mapping names) this build converts."""
        return list(_native().families())

    @property
    def hf_path(self) -> str:
        return self._hf.path

    @property
    def mapping(self) -> str:
        return self._hf.mapping

    @property
    def hf_config(self) -> dict:
        return json.loads(self._hf.hf_config())

    def megatron_config(self) -> dict:
        """The Megatron-Core model config (what `bridge-run config` prints)."""
        return json.loads(self._hf.megatron_config())

    def to_megatron_provider(self, load_weights: bool = False):
        """A provider of the Megatron-Core model: set its parallel sizes,
        finalize(), provide_distributed_model()."""
        from .provider import ModelProvider

        return ModelProvider(self, load_weights=load_weights)

    # -- the live model ---------------------------------------------------------------------

    def _live_model(self, model, hf_path=None):
        # An RL loop exports the same model every step: the live model (its
        # parameters named and checked against the mapping) is kept while the
        # model holds the same parameter, buffer and submodule objects (no
        # module of the process registered a new one since: a counter the
        # registration hooks bump) and each has the storage, shape and dtype
        # it had (checked in C++), which is cheaper than walking the modules.
        _watch_registrations()
        chunks = _chunks(model)
        fingerprint = (None if hf_path is None else str(hf_path), tuple(id(c) for c in chunks), _REGISTRATIONS[0])
        cached = self._live_cache
        if cached is not None and cached[0] == fingerprint and cached[1].unchanged():
            return cached[1], cached[2]
        live, groups = self._new_live_model(model, hf_path)
        self._live_cache = (fingerprint, live, groups)
        return live, groups

    def _new_live_model(self, model, hf_path=None):
        sizes, ranks, groups = _parallel_state()
        tensors = _local_tensors(model)
        names = [n for n, _ in tensors]
        elsewhere: dict[str, tuple[int, Any]] = {}
        if sizes["pp"] > 1:
            import torch.distributed as dist

            # Which stage holds what: once per model, as Megatron-Bridge's
            # conversion tasks are (an all_gather_object over the PP group).
            mine = {n: str(t.dtype).removeprefix("torch.") for n, t in tensors}
            stages: list[Any] = [None] * sizes["pp"]
            dist.all_gather_object(stages, mine, group=groups["pp"])
            import torch

            for stage, held in enumerate(stages):
                if stage == ranks["pp"]:
                    continue
                for n, dtype in held.items():
                    elsewhere.setdefault(n, (stage, getattr(torch, dtype)))
        adapters = _adapters_of(model, names + list(elsewhere), groups["pp"] if sizes["pp"] > 1 else None)
        if adapters is None:
            hf = self._hf if hf_path is None else _native().HFModel(str(hf_path))
        else:
            try:
                hf = _native().HFModel(str(hf_path or self._hf.path), adapters=adapters)
            except ValueError as e:
                raise BridgeError(str(e)) from None
        groups = dict(groups, adapters=adapters)
        try:
            live = _native().LiveModel(hf, sizes, ranks, _local_spec(names), tensors, elsewhere)
        except ValueError as e:
            raise BridgeError(str(e)) from None
        return live, groups

    def load_hf_weights(self, model, hf_path: str | os.PathLike | None = None,
                        memory_budget: int | None = None) -> None:
        """Fills every parameter of this rank's model (a module or a list of
        virtual-pipeline chunks) in place from the HF checkpoint: each rank
        reads and converts only its own tensors; no collective. A model whose
        parameters do not match the mapping is refused before any is written.
        On a GPU, several threads fill parameters at once, with at most
        `memory_budget` bytes of temporaries in flight beyond one tensor
        (None: the runtime's default, 1 GiB)."""
        live, _ = self._new_live_model(model, hf_path)  # once per model: not kept
        start = time.perf_counter()
        try:
            if memory_budget is None:
                live.load()
            else:
                live.load(int(memory_budget))
        except ValueError as e:
            raise BridgeError(str(e)) from None
        # What this rank did, for logs and tests: a TP rank reads its own slices.
        self.last_load = dict(parameters=len(live.names()), bytes_read=live.bytes_read,
                              seconds=time.perf_counter() - start)

    def export_hf_weights(self, model, cpu: bool = False, show_progress: bool = False,
                          bucket_size: int = 256 << 20, receivers: str | int = "all",
                          merge_adapter_weights: bool = True, **_: Any) -> Iterator[tuple[str, Any]]:
        """The model as HF tensors, `(hf_name, tensor)` in plan order. Every
        rank of the model must drive the iterator in lockstep: each step runs
        one bucket's collectives (TP, then EP, then PP) from C++. `bucket_size`
        bounds the bytes one bucket gathers; `receivers` is "all", "dp0"
        (the ranks of data-parallel replica 0) or one global rank: the others
        take part in the collectives and yield nothing. Tensors may share
        memory with the parameters: copy what you keep past the next step.
        The model's naming and checks are kept for the next call while it
        holds the same parameters (an RL loop's every step); the bridge then
        holds references to them until it exports another model. A model
        with LoRA adapters (Megatron-Bridge's LoRA, docs/lora.md) exports its
        weights with the adapters merged in (W + alpha/dim * B A, in fp32), or
        without them with merge_adapter_weights=False."""
        live, groups = self._live_model(model)
        adapters = "merged" if groups["adapters"] and merge_adapter_weights else "without"
        yield from self._stream(live, groups, cpu, bucket_size, receivers, adapters)

    def export_adapter_weights(self, model, cpu: bool = True, show_progress: bool = False,
                               bucket_size: int = 256 << 20, receivers: str | int = "all",
                               **_: Any) -> Iterator[tuple[str, Any]]:
        """The model's LoRA adapters as HF PEFT's matrices, `(name, tensor)`
        with names `<hf module>.lora_A.weight` / `.lora_B.weight`: each HF
        module its rows of B and the Megatron module's A (fused modules split
        as their weights are). Every rank drives it in lockstep, as
        export_hf_weights."""
        live, groups = self._live_model(model)
        if not groups["adapters"]:
            raise BridgeError("the model has no LoRA adapters (no '<module>.adapter.linear_in.weight')")
        yield from self._stream(live, groups, cpu, bucket_size, receivers, "only")

    def save_hf_adapter(self, model, out_dir: str | os.PathLike, rank: int = 0, overwrite: bool = False,
                        bucket_size: int = 256 << 20, **_: Any) -> None:
        """The model's LoRA adapters written by global rank `rank` as an HF
        PEFT directory (adapter_config.json, adapter_model.safetensors) that
        peft.PeftModel.from_pretrained loads onto the HF base. Every rank
        must call it."""
        import shutil

        import torch
        import torch.distributed as dist
        from safetensors.torch import save_file

        me = dist.get_rank() if dist.is_initialized() else 0
        # A fused module's A comes once per HF module, as views of one tensor: a copy each.
        tensors = {f"base_model.model.{n}": t.clone(memory_format=torch.contiguous_format)
                   for n, t in self.export_adapter_weights(model, cpu=True, bucket_size=bucket_size,
                                                           receivers=rank)}
        if me != rank:
            return
        dim, alpha, _ = self._live_model(model)[1]["adapters"]
        out = Path(out_dir)
        if out.exists():
            if not (overwrite and (out / "adapter_config.json").exists()):
                raise BridgeError(f"{out} exists (replaced only with overwrite=True, and only an adapter directory)")
        partial = out.with_name(out.name + f".partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        save_file(tensors, str(partial / "adapter_model.safetensors"), metadata={"format": "pt"})
        leaves = sorted({n[: -len(".lora_A.weight")].rsplit(".", 1)[-1] for n in tensors if n.endswith(".lora_A.weight")})
        config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": self.hf_path,
                  "r": dim, "lora_alpha": alpha, "target_modules": leaves, "lora_dropout": 0.0, "bias": "none",
                  "fan_in_fan_out": False, "use_rslora": False, "use_dora": False, "rank_pattern": {},
                  "alpha_pattern": {}, "modules_to_save": None, "inference_mode": True}
        (partial / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        partial.rename(out)

    def _stream(self, live, groups, cpu, bucket_size, receivers, adapters: str):
        receive = self._receives(receivers)
        stream = live.export(groups["tp"], groups["pp"], groups["ep"], groups["etp"], int(bucket_size),
                             bool(cpu), receive, adapters)
        while True:
            try:
                batch = stream.next()
            except ValueError as e:
                raise BridgeError(str(e)) from None
            if batch is None:
                return
            yield from batch

    @staticmethod
    def _receives(receivers) -> bool:
        import torch.distributed as dist

        if receivers == "all":
            return True
        if receivers == "dp0":
            from megatron.core import parallel_state as ps

            return ps.get_data_parallel_rank() == 0
        rank = dist.get_rank() if dist.is_initialized() else 0
        return rank == int(receivers)

    def save_hf_pretrained(self, model, out_dir: str | os.PathLike, rank: int = 0, overwrite: bool = False,
                           bucket_size: int = 256 << 20, writers: int = 8, merge_adapter_weights: bool = True,
                           **_: Any) -> None:
        """The export stream written as an HF checkpoint by global rank `rank`,
        with the runtime's parallel safetensors writers: the source's shard
        files and index, config.json from the config map, manifest.json, the
        source's tokenizer files; built beside `out_dir` and renamed into place
        (an existing `out_dir` is replaced only with `overwrite`, and only if
        it looks like an earlier output). Every rank must call it."""
        import torch.distributed as dist

        me = dist.get_rank() if dist.is_initialized() else 0
        live, groups = self._live_model(model)
        adapters = "merged" if groups["adapters"] and merge_adapter_weights else "without"
        stream = live.export(groups["tp"], groups["pp"], groups["ep"], groups["etp"], int(bucket_size), True,
                             me == rank, adapters)
        try:
            if me == rank:
                stream.save(str(out_dir), bool(overwrite), int(writers))
            else:
                stream.drain()
        except ValueError as e:
            raise BridgeError(str(e)) from None
