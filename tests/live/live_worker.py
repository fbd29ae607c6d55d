"""One rank of a live-bridge test job (torchrun, gloo, CPU): builds the
Megatron-Core model with bridge's provider at the layout given, loads the HF
checkpoint into it and checks it against the real things, writing what it
found to OUT/rank-<r>.json for the test to assert on:
  * the parameters equal what `bridge-run import` followed by
    dist_checkpointing.load gives (--megatron);
  * without pipeline stages, the logits equal transformers' (fp32), except
    for a hybrid (Mamba) model, whose forward megatron-core cannot run here
    (logits_skipped says why); a VLM's vision tower gives the HF one's output
    on an image (vision_max_diff);
  * export_hf_weights gives every tensor of `bridge-run export`'s output
    (--exported) bit for bit, and nothing else;
  * save_hf_pretrained writes --save (the test loads it with transformers);
  * --mismatch HF: a model of that other checkpoint is refused by name.
"""

from __future__ import annotations

import argparse
import json
import os
import traceback
from pathlib import Path

import torch
import torch.distributed as dist


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--hf", required=True)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--ep", type=int, default=1)
    p.add_argument("--etp", type=int, default=None)
    p.add_argument("--vpp", type=int, default=None)
    p.add_argument("--receivers", default="all")
    p.add_argument("--megatron")
    p.add_argument("--exported")
    p.add_argument("--save")
    p.add_argument("--mismatch")
    p.add_argument("--bucket", type=int, default=4096)
    p.add_argument("--offsets", default="{}",
                   help="JSON: HF name -> the value a zero Megatron tensor exports as (norm_offset's -delta)")
    p.add_argument("--params-dtype", default="float32",
                   help="the model's; with bfloat16 the local spec's torch norms stay float32 and no logits are compared")
    p.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (nccl, GPU LOCAL_RANK)")
    p.add_argument("--adapters", help="a torch.save file: {'dim', 'alpha', 'tensors': the global adapter "
                                      "tensors of an import by torch_dist key}; attached as Megatron-Bridge's "
                                      "LoRA wraps modules, then saved by save_hf_adapter and save_hf_pretrained")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    if a.device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if a.device == "cuda" else "gloo")
    rank = dist.get_rank()
    result: dict = {"rank": rank}
    try:
        run(a, result)
    except Exception:  # noqa: BLE001 - the test shows it
        result["error"] = traceback.format_exc()
    Path(a.out, f"rank-{rank}.json").write_text(json.dumps(result, indent=1))
    dist.destroy_process_group()


def run(a, result: dict) -> None:
    from bridge import AutoBridge, BridgeError
    from megatron.core import parallel_state as ps

    bridge = AutoBridge.from_hf_pretrained(a.hf)
    provider = bridge.to_megatron_provider()
    provider.tensor_model_parallel_size = a.tp
    provider.pipeline_model_parallel_size = a.pp
    provider.expert_model_parallel_size = a.ep
    provider.expert_tensor_parallel_size = a.etp
    provider.virtual_pipeline_model_parallel_size = a.vpp
    provider.params_dtype = getattr(torch, a.params_dtype)
    # The reference import is written with the local spec's keys (TE's for
    # a hybrid, whose builder has one spec): compare models of that spec.
    provider.use_transformer_engine = False
    window = bridge.megatron_config().get("window_size")
    if a.device == "cpu" and window and window[0] >= 16:
        # Megatron-Core builds the sliding-window mask on CUDA; a window wider
        # than the 16-token input masks nothing (the oracle does the same).
        provider.config_overrides = {"window_size": None}
    provider.finalize()
    model = provider.provide_distributed_model(wrap_with_ddp=False)

    if a.mismatch:
        other = AutoBridge.from_hf_pretrained(a.mismatch)
        try:
            other.load_hf_weights(model)
            result["mismatch"] = "accepted"
        except BridgeError as e:
            result["mismatch"] = str(e)
        return

    bridge.load_hf_weights(model)
    result["load"] = bridge.last_load
    if a.adapters:
        _adapters(bridge, model, a, result)
        return
    result["param_dtypes"] = sorted({str(p.dtype) for m in model for p in m.parameters()})
    result["hf_bytes"] = sum(f.stat().st_size for f in Path(a.hf).glob("*.safetensors"))

    if a.megatron:
        from megatron.core import dist_checkpointing

        again = provider.provide_distributed_model(wrap_with_ddp=False)
        unequal = []
        # All chunks in one load, as Megatron-LM saves virtual pipeline stages.
        state = dist_checkpointing.load({f"model{i}": c.sharded_state_dict() for i, c in enumerate(again)},
                                        str(Path(a.megatron, "iter_0000000")))
        for i, (mine, theirs) in enumerate(zip(model, again)):
            own = state[f"model{i}"]
            theirs.load_state_dict({k: v for k, v in own.items() if k in theirs.state_dict()}, strict=True)
            want = theirs.state_dict()
            for name, value in mine.state_dict().items():
                if name.endswith("_extra_state"):
                    continue
                if not torch.equal(value, want[name]):
                    unequal.append(name)
        result["unequal_to_import"] = unequal
        result["compared_to_import"] = len(model[0].state_dict())

    if bridge.megatron_config().get("hybrid_override_pattern"):
        # A MambaModel builds here but cannot run: the parameters and the
        # export stream are still compared, the logits are not.
        from bridge.megatron_model import MAMBA_FORWARD_UNAVAILABLE

        result["logits_skipped"] = MAMBA_FORWARD_UNAVAILABLE
    elif a.params_dtype != "float32":
        result["logits_skipped"] = f"{a.params_dtype} parameters, against transformers in float32"
    elif ps.get_pipeline_model_parallel_world_size() == 1:
        import transformers

        vlm = bool(bridge.megatron_config().get("vision_model"))
        auto = transformers.AutoModelForImageTextToText if vlm else transformers.AutoModelForCausalLM
        dev = torch.device("cuda", torch.cuda.current_device()) if a.device == "cuda" else torch.device("cpu")
        hf = auto.from_pretrained(a.hf, dtype=torch.float32).eval().to(dev)
        vocab = hf.config.get_text_config().vocab_size
        seq = 16
        torch.manual_seed(0)
        tokens = torch.randint(0, vocab, (2, seq)).to(dev)
        positions = torch.arange(seq, device=dev).unsqueeze(0).expand(2, -1)
        if vlm:
            # Text alone: the time, height and width positions (mrope) are all the token's.
            positions = positions.unsqueeze(0).expand(3, -1, -1)
        mask = torch.triu(torch.ones(seq, seq, dtype=torch.bool, device=dev), 1)[None, None]
        with torch.no_grad():
            ours = model[0].eval()(tokens, positions, mask).float()
            group = ps.get_tensor_model_parallel_group()
            parts = [torch.empty_like(ours) for _ in range(ps.get_tensor_model_parallel_world_size())]
            dist.all_gather(parts, ours.contiguous(), group=group)
            ours = torch.cat(parts, -1)[..., :vocab]
            ref = hf(tokens).logits.float()
        result["logits_max_diff"] = (ours - ref).abs().max().item()
        if vlm:
            # The vision tower (replicated on every TP rank) on one image of
            # 4x4 patches, against the HF model's.
            cfg = hf.config.vision_config
            grid = torch.tensor([[1, 4, 4]], device=dev)
            pixels = torch.randn(16, cfg.in_channels * cfg.temporal_patch_size * cfg.patch_size ** 2, device=dev)
            with torch.no_grad():
                ours = model[0].visual(pixels, grid_thw=grid).pooler_output
                ref = hf.model.visual(pixels, grid_thw=grid).pooler_output
            result["vision_max_diff"] = (ours - ref).abs().max().item()

    if a.exported:
        from safetensors.torch import load_file

        want = {}
        for f in Path(a.exported).glob("*.safetensors"):
            want.update(load_file(str(f)))
        got = {}
        receivers = int(a.receivers) if a.receivers.isdigit() else a.receivers
        for name, tensor in bridge.export_hf_weights(model, cpu=True, bucket_size=a.bucket, receivers=receivers):
            if name in got:
                result.setdefault("export_twice", []).append(name)
            got[name] = tensor.clone()
        result["export_missing"] = sorted(set(want) - set(got))
        result["export_extra"] = sorted(set(got) - set(want))
        result["export_unequal"] = sorted(n for n in set(want) & set(got)
                                          if want[n].dtype != got[n].dtype or not torch.equal(want[n], got[n]))
        result["export_count"] = len(got)
        result["export_devices"] = sorted({str(t.device.type) for t in got.values()})

    if a.save:
        bridge.save_hf_pretrained(model, a.save)

    if a.exported:
        # An RL loop's next step: the weights change in place and the same
        # model is exported again (from the live model kept by the first
        # export): the stream must carry the new values. Last, as it zeroes
        # the model.
        from bridge.auto_bridge import _local_tensors

        with torch.no_grad():
            for _, t in _local_tensors(model):
                t.zero_()
        again = {n: t for n, t in bridge.export_hf_weights(model, cpu=True, bucket_size=a.bucket,
                                                             receivers=receivers)}
        result["export_again_count"] = len(again)
        # A norm kept offset (norm_offset) exports a zero tensor as -delta.
        offsets = json.loads(a.offsets)
        result["export_again_nonzero"] = sorted(n for n, t in again.items() if t.ne(offsets.get(n, 0.0)).any().item())
        # Parameters given new storage (`param.data = ...`, as some wrappers
        # do): the kept live model no longer serves; the stream has the new
        # values, none of the old zeros.
        with torch.no_grad():
            for _, t in _local_tensors(model):
                t.data = torch.ones_like(t)
        swapped = {n: t for n, t in bridge.export_hf_weights(model, cpu=True, bucket_size=a.bucket,
                                                               receivers=receivers)}
        result["export_swapped_count"] = len(swapped)
        result["export_swapped_zero"] = sorted(n for n, t in swapped.items() if t.count_nonzero().item() == 0)


def _adapters(bridge, model, a, result: dict) -> None:
    """Megatron-Bridge's LoRA layout, written here from its sources
    (peft/utils.py ParallelLinearAdapter) rather than from the runtime's:
    each adapted module gets `adapter.linear_in` / `adapter.linear_out`
    holding this TP rank's slices, and the adapter's `dim` and `alpha`.
    Beside a column-parallel module A is cut on its rows (the rank) and B
    like the weight (fc1: [gate_p; up_p]); beside a row-parallel one A on
    its columns and B on its rows."""
    from megatron.core import parallel_state as ps

    spec = torch.load(a.adapters)
    tp, rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    for chunk in model:
        for layer in chunk.decoder.layers:
            g = layer.layer_number - 1
            for module in ("self_attention.linear_qkv", "self_attention.linear_proj", "mlp.linear_fc1",
                           "mlp.linear_fc2"):
                key = f"decoder.layers.{module}.adapter.linear_"
                if key + "in.weight" not in spec["tensors"]:
                    continue
                A, B = spec["tensors"][key + "in.weight"][g], spec["tensors"][key + "out.weight"][g]
                if module.endswith(("linear_proj", "linear_fc2")):
                    a_, b_ = A.chunk(tp, 1)[rank], B.chunk(tp, 0)[rank]
                else:
                    a_ = A.chunk(tp, 0)[rank]
                    if module.endswith("linear_fc1"):
                        gate, up = B.chunk(2, 0)
                        b_ = torch.cat([gate.chunk(tp, 0)[rank], up.chunk(tp, 0)[rank]])
                    else:
                        b_ = B.chunk(tp, 0)[rank]
                adapter = torch.nn.Module()
                adapter.linear_in = torch.nn.Linear(a_.shape[1], a_.shape[0], bias=False)
                adapter.linear_out = torch.nn.Linear(b_.shape[1], b_.shape[0], bias=False)
                with torch.no_grad():
                    adapter.linear_in.weight.copy_(a_)
                    adapter.linear_out.weight.copy_(b_)
                adapter.dim, adapter.alpha = spec["dim"], spec["alpha"]
                layer.get_submodule(module).adapter = adapter
    bridge.save_hf_adapter(model, Path(a.out, "adapter"))
    bridge.save_hf_pretrained(model, Path(a.out, "merged"))
    got = {n: t.clone() for n, t in bridge.export_hf_weights(model, cpu=True, merge_adapter_weights=False)}
    result["unmerged_names"] = sorted(got)
    # Merging left the model's weights as they were: the base streams back.
    from safetensors.torch import load_file

    base = {}
    for f in Path(a.hf).glob("*.safetensors"):
        base.update(load_file(str(f)))
    result["unmerged_unequal"] = sorted(n for n in got if n in base and not torch.equal(got[n], base[n]))


if __name__ == "__main__":
    main()
