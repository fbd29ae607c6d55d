"""LoRA adapters both ways, against the real peft, transformers and megatron-core.

A tiny model made by transformers gets an HF PEFT LoRA adapter made by peft,
with random non-zero A and B on its target modules. `bridge-run import --hf
BASE --adapter DIR` writes it beside the weights in Megatron-Bridge's LoRA
layout (docs/lora.md); the oracles:
- megatron-core's GPTModel with the imported weights, and the imported
  adapters added to its linear layers' outputs as Megatron-Bridge's LoRA does
  ((alpha / dim) * B A x beside linear_qkv, linear_proj, linear_fc1,
  linear_fc2), gives the PEFT model's logits;
- `export --merge-adapters` loads in transformers with the PEFT model's logits;
- `export --adapter-only` gives back the adapter bit for bit, and
  peft.PeftModel.from_pretrained loads it (no missing, no unexpected key);
- bad adapters are refused, naming the tensor or field, with nothing written.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import megatron_oracle
import tiny_models

import peft  # noqa: E402  (pinned in scripts/requirements.txt; scripts/setup.sh installs it)

# Dense GQA (q, k, v adapted apart: the import stacks their A), HF-fused
# qkv_proj and gate_up_proj (Phi-3: one A each), qkv biases (Qwen2), a MoE
# whose attention and shared expert are adapted (Qwen2-MoE), and MLA.
ALL_LINEAR = {
    "llama3.1-8b": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "phi3-mini": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "qwen2.5-7b": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen1.5-moe-a2.7b": ["q_proj", "k_proj", "v_proj", "o_proj", "shared_expert.gate_proj",
                          "shared_expert.up_proj", "shared_expert.down_proj"],
    # Multi-latent attention (round trips and the merged export; megatron-core
    # runs no MLA on CPU).
    "deepseek-v2-lite": ["q_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"],
}
# Families whose HF adapter adapts apart modules Megatron fuses (q, k, v;
# gate, up): the import stacks their A.
FUSED_APART = {"llama3.1-8b", "qwen2.5-7b", "qwen1.5-moe-a2.7b"}
FAMILIES = list(ALL_LINEAR)
RANK, ALPHA = 4, 8
LOGITS_ATOL = 1e-5  # fp32 on CPU, as test_import_export


def _run(bridge_run, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(bridge_run.path), *args], capture_output=True, text=True)


def _peft_model(ckpt, adapter_dir: Path | None = None, targets=None, seed: int = 1, shared_a: bool = False,
                **config):
    """The base in fp32 with a LoRA adapter: loaded from adapter_dir, or made
    on `targets` with random A and B (shared_a: one A for the HF modules a
    Megatron module fuses, as an adapter Megatron trained has)."""
    import torch
    import transformers

    auto = getattr(transformers, ckpt.family.auto_class)
    base = auto.from_pretrained(str(ckpt.path), dtype=torch.float32).eval()
    if adapter_dir is not None:
        return peft.PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    cfg = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=targets, lora_dropout=0.0, **config)
    model = peft.get_peft_model(base, cfg).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        params = dict(model.named_parameters())
        for name, p in params.items():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        if shared_a:
            for name, p in params.items():
                for first, others in ((".q_proj.", (".k_proj.", ".v_proj.")), (".gate_proj.", (".up_proj.",))):
                    if "lora_A" in name and first in name:
                        for o in others:
                            params[name.replace(first, o)].copy_(p)
    return model


def _logits(model, vocab: int):
    import torch

    torch.manual_seed(0)
    tokens = torch.randint(0, vocab, (2, 16))
    with torch.no_grad():
        return model(tokens).logits.float(), tokens


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_checkpoints):
    """(family, variant) -> (checkpoint, adapter directory), made once."""
    cache: dict = {}

    def get(family_id: str, variant: str = "all") -> tuple:
        key = (family_id, variant)
        if key not in cache and variant == "experts":
            ckpt = tiny_checkpoints(family_id)
            out = tmp_path_factory.mktemp("peft") / f"{family_id}-{variant}"
            cache[key] = (ckpt, _per_expert_adapter(ckpt, out))
        if key not in cache:
            ckpt = tiny_checkpoints(family_id)
            targets = ALL_LINEAR[family_id] if variant != "qv" else ["q_proj", "v_proj"]
            model = _peft_model(ckpt, targets=targets, shared_a=variant == "shared")
            out = tmp_path_factory.mktemp("peft") / f"{family_id}-{variant}"
            model.save_pretrained(str(out))
            cache[key] = (ckpt, out)
        return cache[key]

    return get


def _per_expert_adapter(ckpt, out: Path) -> Path:
    """An adapter on every linear module, routed experts included, keyed
    per expert as PEFT saved them with transformers 4
    (`mlp.experts.<e>.gate_proj.lora_A.weight`): the form of the MoE adapters
    published so far. peft 0.22.0 loads it onto transformers 5's fused
    experts itself (its per-expert LoRA as one block-diagonal adapter)."""
    import torch
    from safetensors.torch import load_file, save_file

    gen = torch.Generator().manual_seed(3)
    tensors = {}
    for f in sorted(ckpt.path.glob("*.safetensors")):
        for name, w in load_file(str(f)).items():
            module = name[: -len(".weight")]
            if name.endswith(".weight") and w.dim() == 2 and module.rsplit(".", 1)[-1] in ALL_LINEAR["llama3.1-8b"]:
                tensors[f"base_model.model.{module}.lora_A.weight"] = torch.randn(RANK, w.shape[1], generator=gen) * 0.1
                tensors[f"base_model.model.{module}.lora_B.weight"] = torch.randn(w.shape[0], RANK, generator=gen) * 0.1
    out.mkdir(parents=True)
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": RANK, "lora_alpha": ALPHA, "lora_dropout": 0.0,
        "bias": "none", "target_modules": ALL_LINEAR["llama3.1-8b"], "base_model_name_or_path": str(ckpt.path)}))
    return out


def _import(bridge_run, ckpt, adapter: Path, out: Path, tp: int = 1, *extra: str) -> Path:
    r = _run(bridge_run, "import", "--hf", str(ckpt.path), "--adapter", str(adapter), "--out", str(out),
             "--tp", str(tp), "--quiet", *extra)
    assert r.returncode == 0, r.stderr
    return out


def _tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def _same_bits(a, b) -> bool:
    import torch

    return a.dtype == b.dtype and a.shape == b.shape and a.contiguous().view(torch.uint8).equal(
        b.contiguous().view(torch.uint8))


# (TP, PP, EP): torch_dist cuts chunks by layout; EP only where there are experts.
LAYOUTS = [(1, 1, 1), (2, 1, 1), (1, 2, 1), (2, 2, 1)]
MOE_LAYOUTS = [(1, 1, 2), (2, 1, 2)]


@pytest.mark.parametrize("family_id,variant,tp,pp,ep",
                         [(f, "all", *l) for f in FAMILIES for l in LAYOUTS]
                         + [("qwen1.5-moe-a2.7b", "experts", *l) for l in LAYOUTS + MOE_LAYOUTS])
def test_adapter_round_trip_is_bit_exact(bridge_run, adapters, tmp_path, family_id, variant, tp, pp, ep):
    """HF PEFT -> Megatron -> HF PEFT: every tensor bit for bit, the same rank
    and alpha, and peft loads the export onto the base with the same logits."""
    ckpt, adapter = adapters(family_id, variant)
    mg = _import(bridge_run, ckpt, adapter, tmp_path / "mg", tp, "--pp", str(pp), "--ep", str(ep))
    out = tmp_path / "peft"
    r = _run(bridge_run, "export", "--megatron", str(mg), "--adapter-only", "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    src, got = _tensors(adapter), _tensors(out)
    assert sorted(src) == sorted(got)
    assert [k for k in src if not _same_bits(src[k], got[k])] == []
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert (cfg["r"], cfg["lora_alpha"], cfg["rank_pattern"]) == (RANK, ALPHA, {})
    vocab = ckpt.text_config_json["vocab_size"]
    ref, _ = _logits(_peft_model(ckpt, adapter), vocab)
    back, _ = _logits(_peft_model(ckpt, out), vocab)
    assert back.equal(ref)


def _megatron_logits_with_adapters(bridge_run, ckpt, mg: Path, tokens):
    """megatron-core's GPTModel (local spec, TP 1) with the imported weights,
    and the imported adapters added to each adapted linear layer's output,
    scaled by alpha / dim from bridge.json, as Megatron-Bridge's LoRALinear."""
    import torch
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing import ShardedTensor
    from torch.distributed.checkpoint import FileSystemReader

    meg = dict(bridge_run.config(str(ckpt.path))["megatron"], params_dtype="float32", bf16=False, fp16=False)
    if meg.get("window_size") and meg["window_size"][0] >= tokens.shape[1]:
        meg["window_size"] = None  # masks nothing here; megatron-core builds it on CUDA (as assert_logits_match)
    model = megatron_oracle.build_gpt_model(meg).eval()
    it = mg / "iter_0000000"
    state = dist_checkpointing.load(model.sharded_state_dict(), str(it))
    model.load_state_dict({k: v for k, v in state.items() if k in model.state_dict()}, strict=True)

    side = json.loads((it / "bridge.json").read_text())["adapter"]
    scale = side["alpha"] / side["dim"]
    metadata = FileSystemReader(str(it)).read_metadata().state_dict_metadata
    keys = [k for k in metadata if ".adapter.linear_" in k and hasattr(metadata[k], "size")]
    assert keys, "the import wrote no adapter key"
    request = {k: ShardedTensor.from_rank_offsets(k, torch.empty(tuple(metadata[k].size)), replica_id=0)
               for k in keys}
    loaded = dist_checkpointing.load(request, str(it))
    stacked = all(not k.split(".")[2].isdigit() for k in keys if k.startswith("decoder.layers."))

    def matrix(module: str, layer: int, which: str):
        key = f"decoder.layers.{module}.adapter.linear_{which}.weight"
        if stacked:
            return loaded[key][layer]
        return loaded[f"decoder.layers.{layer}.{module}.adapter.linear_{which}.weight"]

    hooks = []
    adapted = set()

    def add(module, a, b):
        def hook(mod, inputs, output, a=a, b=b):
            out, bias = output
            return out + scale * (inputs[0] @ a.t() @ b.t()), bias

        hooks.append(module.register_forward_hook(hook))

    for i, layer in enumerate(model.decoder.layers):
        # Routed experts (SequentialMLP's local_experts): one adapter each,
        # on the expert axis of 'experts.experts' (and the layer axis first
        # where the layers are stacked).
        for which in ("linear_fc1", "linear_fc2"):
            key = (f"decoder.layers.mlp.experts.experts.{which}.adapter.linear_" if stacked else
                   f"decoder.layers.{i}.mlp.experts.experts.{which}.adapter.linear_")
            if key + "in.weight" not in loaded:
                continue
            adapted.add(f"experts.{which}")
            a_all, b_all = loaded[key + "in.weight"], loaded[key + "out.weight"]
            if stacked:
                a_all, b_all = a_all[i], b_all[i]
            for e, expert in enumerate(layer.mlp.experts.local_experts):
                add(getattr(expert, which), a_all[e], b_all[e])
        for module in ("self_attention.linear_qkv", "self_attention.linear_proj", "mlp.linear_fc1",
                       "mlp.linear_fc2", "mlp.shared_experts.linear_fc1", "mlp.shared_experts.linear_fc2"):
            probe = f"decoder.layers.{module}.adapter.linear_in.weight" if stacked else \
                f"decoder.layers.{i}.{module}.adapter.linear_in.weight"
            if probe not in loaded:
                continue
            adapted.add(module)
            add(layer.get_submodule(module), matrix(module, i, "in"), matrix(module, i, "out"))
    assert adapted, f"no adapted module among {keys[:4]}"
    positions = torch.arange(tokens.shape[1]).unsqueeze(0).expand(tokens.shape[0], -1)
    mask = torch.triu(torch.ones(tokens.shape[1], tokens.shape[1], dtype=torch.bool), 1)[None, None]
    with torch.no_grad():
        logits = model(tokens, positions, mask).float()
    for h in hooks:
        h.remove()
    return logits


@pytest.mark.parametrize("family_id,variant", [(f, "all") for f in FAMILIES] + [("llama3.1-8b", "qv"),
                                                                               ("llama3.1-8b", "shared"),
                                                                               ("qwen1.5-moe-a2.7b", "experts")])
def test_megatron_core_with_the_imported_adapters_gives_the_peft_logits(bridge_run, adapters, mcore, tmp_path,
                                                                        family_id, variant):
    """The PEFT model's logits from megatron-core running the imported
    weights with the imported adapters (chunks cut for TP 2, loaded at TP 1)."""
    ckpt, adapter = adapters(family_id, variant)
    mg = _import(bridge_run, ckpt, adapter, tmp_path / "mg", 2, "--local-spec")
    ref, tokens = _logits(_peft_model(ckpt, adapter), ckpt.text_config_json["vocab_size"])
    ours = _megatron_logits_with_adapters(bridge_run, ckpt, mg, tokens)[..., : ref.shape[-1]]
    diff = (ours - ref).abs().max().item()
    assert diff <= LOGITS_ATOL, f"max |megatron-core with adapters - PEFT| = {diff}"
    # The adapters matter: the base alone is far from the PEFT model.
    model = _peft_model(ckpt, adapter)
    with model.disable_adapter():
        base, _ = _logits(model, ckpt.text_config_json["vocab_size"])
    assert (base - ref).abs().max().item() > 1000 * LOGITS_ATOL
    side = json.loads((mg / "iter_0000000" / "bridge.json").read_text())["adapter"]
    # q, k, v adapted apart are stacked (3 blocks); an adapter whose fused
    # modules share A (Megatron's own) keeps its rank.
    fused_apart = variant not in ("shared",) and family_id in FUSED_APART
    assert side["dim"] == (3 * RANK if fused_apart else RANK)


@pytest.mark.parametrize("family_id,variant", [(f, "all") for f in FAMILIES] + [("qwen1.5-moe-a2.7b", "experts")])
def test_merged_export_gives_the_peft_logits(bridge_run, bridge_device, adapters, tmp_path, family_id, variant):
    """export --merge-adapters: the HF checkpoint transformers loads with the
    PEFT model's logits (W + alpha / r * B A, computed in fp32; on the GPU
    with --bridge-device cuda, ctest label gpu)."""
    import torch
    import transformers

    ckpt, adapter = adapters(family_id, variant)
    mg = _import(bridge_run, ckpt, adapter, tmp_path / "mg", 2)
    out = tmp_path / "merged"
    r = _run(bridge_run, "export", "--megatron", str(mg), "--merge-adapters", "--out", str(out), "--quiet",
             "--device", bridge_device)
    assert r.returncode == 0, r.stderr
    # PEFT's own merge in fp32 (merge_and_unload), stored in the base's
    # dtype as a checkpoint holds it, then run in fp32 as the export is.
    vocab = ckpt.text_config_json["vocab_size"]
    from safetensors.torch import load_file

    stored = {}
    for f in ckpt.path.glob("*.safetensors"):
        stored.update({k: v.dtype for k, v in load_file(str(f)).items()})
    reference = _peft_model(ckpt, adapter).merge_and_unload()
    with torch.no_grad():
        for name, p in reference.named_parameters():
            if name in stored:
                p.copy_(p.to(stored[name]).float())
    ref, _ = _logits(reference.eval(), vocab)
    merged = getattr(transformers, ckpt.family.auto_class).from_pretrained(str(out), dtype=torch.float32).eval()
    got, _ = _logits(merged, vocab)
    diff = (got - ref).abs().max().item()
    assert diff <= LOGITS_ATOL, f"max |merged export - PEFT's merge| = {diff}"
    # Without a flag the export is the base, and says the adapters were left out.
    r = _run(bridge_run, "export", "--megatron", str(mg), "--out", str(tmp_path / "base"))
    assert r.returncode == 0 and "holds LoRA adapters, which are not in this export" in r.stderr
    base, _ = _logits(getattr(transformers, ckpt.family.auto_class).from_pretrained(
        str(ckpt.path), dtype=torch.float32).eval(), vocab)
    plain, _ = _logits(getattr(transformers, ckpt.family.auto_class).from_pretrained(
        str(tmp_path / "base"), dtype=torch.float32).eval(), vocab)
    assert plain.equal(base)


def test_partial_targets_round_trip(bridge_run, adapters, tmp_path):
    """PEFT's default for Llama adapts q_proj and v_proj only: k_proj's block
    of linear_qkv is zero in Megatron and left out again on export."""
    ckpt, adapter = adapters("llama3.1-8b", "qv")
    mg = _import(bridge_run, ckpt, adapter, tmp_path / "mg", 2)
    out = tmp_path / "peft"
    assert _run(bridge_run, "export", "--megatron", str(mg), "--adapter-only", "--out", str(out)).returncode == 0
    src, got = _tensors(adapter), _tensors(out)
    assert sorted(src) == sorted(got) and all(_same_bits(src[k], got[k]) for k in src)


def test_reshard_keeps_the_adapters(bridge_run, adapters, tmp_path):
    ckpt, adapter = adapters("llama3.1-8b")
    mg = _import(bridge_run, ckpt, adapter, tmp_path / "mg", 1)
    r = _run(bridge_run, "reshard", "--megatron", str(mg), "--out", str(tmp_path / "mg2"), "--tp", "2", "--quiet")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "peft"
    r = _run(bridge_run, "export", "--megatron", str(tmp_path / "mg2"), "--adapter-only", "--out", str(out))
    assert r.returncode == 0, r.stderr
    src, got = _tensors(adapter), _tensors(out)
    assert sorted(src) == sorted(got) and all(_same_bits(src[k], got[k]) for k in src)


def _edited_adapter(adapter: Path, out: Path, config=None, tensors=None) -> Path:
    """A copy of `adapter` with its config and tensors changed."""
    from safetensors.torch import save_file

    out.mkdir(parents=True)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    (out / "adapter_config.json").write_text(json.dumps(config(cfg) if config else cfg))
    t = _tensors(adapter)
    save_file(tensors(t) if tensors else t, str(out / "adapter_model.safetensors"))
    return out


def _renamed(t: dict) -> dict:
    k = next(k for k in t if ".q_proj.lora_A" in k)
    t[k.replace("q_proj", "q_projection")] = t.pop(k)
    return t


BAD_ADAPTERS = {
    "module-the-base-lacks": (None, _renamed, "which the base checkpoint"),
    "rank-mismatch": (lambda c: dict(c, r=8), None, "a rank other than adapter_config.json's r"),
    "dora": (lambda c: dict(c, use_dora=True), None, "DoRA adapters are not converted"),
    "other-peft-type": (lambda c: dict(c, peft_type="LOHA"), None, "only LoRA adapters are converted"),
    "rslora": (lambda c: dict(c, use_rslora=True), None, "rank-stabilized scaling"),
    "rank-pattern": (lambda c: dict(c, rank_pattern={"q_proj": 2}), None, "rank_pattern gives modules"),
    "not-a-lora-tensor": (None, lambda t: dict(t, **{"base_model.model.model.embed_tokens.lora_embedding_A":
                                                     next(iter(t.values())).clone()}), "is not a LoRA A or B matrix"),
}


@pytest.mark.parametrize("case", list(BAD_ADAPTERS))
def test_bad_adapter_is_refused_with_nothing_written(bridge_run, adapters, tmp_path, case):
    ckpt, adapter = adapters("llama3.1-8b")
    config, tensors, message = BAD_ADAPTERS[case]
    bad = _edited_adapter(adapter, tmp_path / "bad", config, tensors)
    r = _run(bridge_run, "import", "--hf", str(ckpt.path), "--adapter", str(bad), "--out", str(tmp_path / "mg"))
    assert r.returncode == 1 and message in r.stderr, r.stderr
    assert not (tmp_path / "mg").exists()
    assert not list(tmp_path.glob("mg.partial-*"))


def test_routed_expert_adapters_are_refused(bridge_run, tiny_checkpoints, tmp_path):
    """transformers 5 fuses a MoE's routed experts into 3-D parameters, which
    PEFT adapts through target_parameters: not converted, and said so."""
    ckpt = tiny_checkpoints("qwen3-30b-a3b")
    model = _peft_model(ckpt, targets=["q_proj"], target_parameters=["mlp.experts.gate_up_proj"])
    model.save_pretrained(str(tmp_path / "peft"))
    r = _run(bridge_run, "import", "--hf", str(ckpt.path), "--adapter", str(tmp_path / "peft"), "--out",
             str(tmp_path / "mg"))
    assert r.returncode == 1 and "target_parameters is set" in r.stderr, r.stderr
    assert not (tmp_path / "mg").exists()


def test_rank_must_divide_over_tp(bridge_run, adapters, tmp_path):
    ckpt, adapter = adapters("phi3-mini")  # rank 4, not stacked
    r = _run(bridge_run, "import", "--hf", str(ckpt.path), "--adapter", str(adapter), "--out", str(tmp_path / "mg"),
             "--tp", "8")
    assert r.returncode == 1
    assert "does not divide over TP=8" in r.stderr or "does not fit this model" in r.stderr, r.stderr


def test_export_flags_need_adapters(bridge_run, tiny_checkpoints, tmp_path):
    ckpt = tiny_checkpoints("llama3.1-8b")
    r = _run(bridge_run, "import", "--hf", str(ckpt.path), "--out", str(tmp_path / "mg"), "--quiet")
    assert r.returncode == 0, r.stderr
    for flag in ("--adapter-only", "--merge-adapters"):
        r = _run(bridge_run, "export", "--megatron", str(tmp_path / "mg"), flag, "--out", str(tmp_path / "x"))
        assert r.returncode == 1 and "records no LoRA adapters" in r.stderr, r.stderr
        assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("tp,pp", [(2, 1), (1, 2)], ids=["tp2", "pp2"])
def test_live_bridge_streams_and_merges_the_adapters_of_a_running_model(bridge_run, adapters, mcore, tmp_path,
                                                                       tp, pp):
    """A Megatron-Core model at TP 2 or PP 2 (gloo, two processes) carrying LoRA
    adapters as Megatron-Bridge's LoRA wraps its modules (each rank its
    slices, cut in the worker from Megatron-Bridge's rules): save_hf_adapter
    gives back the HF PEFT adapter bit for bit, save_hf_pretrained (merged)
    the bytes of `export --merge-adapters`, and export_hf_weights without
    merging the base's tensor names."""
    import torch
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing import ShardedTensor
    from torch.distributed.checkpoint import FileSystemReader

    import test_live_bridge as live

    live._BUILD[:] = [Path(bridge_run.path).resolve().parents[1]]
    ckpt, adapter = adapters("llama3.1-8b", "shared")  # Megatron's own adapter: one A per fused module
    mg = _import(bridge_run, ckpt, adapter, tmp_path / "mg", 2, "--local-spec")
    it = mg / "iter_0000000"
    metadata = FileSystemReader(str(it)).read_metadata().state_dict_metadata
    keys = [k for k in metadata if ".adapter.linear_" in k and hasattr(metadata[k], "size")]
    request = {k: ShardedTensor.from_rank_offsets(k, torch.empty(tuple(metadata[k].size)), replica_id=0)
               for k in keys}
    side = json.loads((it / "bridge.json").read_text())["adapter"]
    spec = {"dim": side["dim"], "alpha": side["alpha"], "tensors": dist_checkpointing.load(request, str(it))}
    torch.save(spec, tmp_path / "adapters.pt")

    merged = tmp_path / "merged-cli"
    r = _run(bridge_run, "export", "--megatron", str(mg), "--merge-adapters", "--out", str(merged), "--quiet")
    assert r.returncode == 0, r.stderr

    reports = live._job(2, tmp_path / "job", "--hf", str(ckpt.path), "--tp", str(tp), "--pp", str(pp),
                        "--adapters", str(tmp_path / "adapters.pt"))
    out = tmp_path / "job"
    src, got = _tensors(adapter), _tensors(out / "adapter")
    assert sorted(src) == sorted(got)
    assert [k for k in src if not _same_bits(src[k], got[k])] == []
    cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert (cfg["r"], cfg["lora_alpha"]) == (RANK, ALPHA)
    from safetensors.torch import load_file

    want = {}
    for f in merged.glob("*.safetensors"):
        want.update(load_file(str(f)))
    have = {}
    for f in (out / "merged").glob("*.safetensors"):
        have.update(load_file(str(f)))
    assert sorted(want) == sorted(have)
    assert [k for k in want if not _same_bits(want[k], have[k])] == []
    base = {}
    for f in ckpt.path.glob("*.safetensors"):
        base.update(load_file(str(f)))
    assert reports[0]["unmerged_names"] == sorted(base)
    assert reports[0]["unmerged_unequal"] == []


def _run_checkpoint(mg: Path, out: Path, run_config: str) -> Path:
    """What a Megatron-Bridge LoRA run saves: megatron-core's
    dist_checkpointing.save of the adapter tensors alone (its PEFT filter
    keeps '.adapter.' keys), run_config.yaml beside them, the tracker file."""
    import torch
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing import ShardedTensor
    from torch.distributed.checkpoint import FileSystemReader

    it = mg / "iter_0000000"
    metadata = FileSystemReader(str(it)).read_metadata().state_dict_metadata
    keys = [k for k in metadata if ".adapter.linear_" in k and hasattr(metadata[k], "size")]
    request = {k: ShardedTensor.from_rank_offsets(k, torch.empty(tuple(metadata[k].size)), replica_id=0)
               for k in keys}
    tensors = dist_checkpointing.load(request, str(it))
    (out / "iter_0000010").mkdir(parents=True)
    if not torch.cuda.is_available():
        # megatron-core's save synchronizes CUDA after its host copies
        # (../shared/reference/megatron-core-on-cpu.md, workaround 6).
        torch.cuda.synchronize = lambda *a, **k: None
    dist_checkpointing.save({k: ShardedTensor.from_rank_offsets(k, tensors[k], replica_id=0) for k in keys},
                            str(out / "iter_0000010"))
    (out / "iter_0000010" / "run_config.yaml").write_text(run_config)
    (out / "latest_checkpointed_iteration.txt").write_text("10")
    return out


LORA_RUN_CONFIG = """model:
  num_layers: 2
peft:
  _target_: megatron.bridge.peft.lora.LoRA
  alpha: {alpha}
  dim: {dim}
  dropout: 0.0
  target_modules:
  - linear_qkv
  - linear_proj
  - linear_fc1
  - linear_fc2
checkpoint:
  save: /somewhere
"""


def test_a_megatron_bridge_lora_run_exports_on_its_base(bridge_run, adapters, mcore, tmp_path):
    """export --megatron RUN --base BASE: the adapter-only checkpoint of a
    Megatron-Bridge LoRA run (saved here by megatron-core's own
    dist_checkpointing) becomes the HF PEFT adapter bit for bit, and the
    merged export the bytes of merging the same adapters imported beside the
    weights."""
    ckpt, adapter = adapters("llama3.1-8b", "shared")
    mg = _import(bridge_run, ckpt, adapter, tmp_path / "mg", 2)
    base = tmp_path / "base"
    r = _run(bridge_run, "import", "--hf", str(ckpt.path), "--out", str(base), "--tp", "2", "--quiet")
    assert r.returncode == 0, r.stderr
    run = _run_checkpoint(mg, tmp_path / "run", LORA_RUN_CONFIG.format(alpha=ALPHA, dim=RANK))

    out = tmp_path / "peft"
    r = _run(bridge_run, "export", "--megatron", str(run), "--base", str(base), "--adapter-only", "--out", str(out))
    assert r.returncode == 0, r.stderr
    src, got = _tensors(adapter), _tensors(out)
    assert sorted(src) == sorted(got) and all(_same_bits(src[k], got[k]) for k in src)

    from safetensors.torch import load_file

    def tensors_of(d: Path) -> dict:
        out = {}
        for f in d.glob("*.safetensors"):
            out.update(load_file(str(f)))
        return out

    for d, args in ((tmp_path / "m1", ["--megatron", str(mg)]),
                    (tmp_path / "m2", ["--megatron", str(run), "--base", str(base)])):
        r = _run(bridge_run, "export", *args, "--merge-adapters", "--out", str(d), "--quiet")
        assert r.returncode == 0, r.stderr
    want, have = tensors_of(tmp_path / "m1"), tensors_of(tmp_path / "m2")
    assert sorted(want) == sorted(have) and all(_same_bits(want[k], have[k]) for k in want)

    # A run of another PEFT, or without its run config: refused, nothing written.
    canonical = _run_checkpoint(mg, tmp_path / "canonical",
                                LORA_RUN_CONFIG.format(alpha=ALPHA, dim=RANK).replace("lora.LoRA", "canonical_lora.CanonicalLoRA"))
    r = _run(bridge_run, "export", "--megatron", str(canonical), "--base", str(base), "--adapter-only", "--out",
             str(tmp_path / "x"))
    assert r.returncode == 1 and "only Megatron-Bridge's LoRA" in r.stderr, r.stderr
    (canonical / "iter_0000010" / "run_config.yaml").unlink()
    r = _run(bridge_run, "export", "--megatron", str(canonical), "--base", str(base), "--adapter-only", "--out",
             str(tmp_path / "x"))
    assert r.returncode == 1 and "has no run_config.yaml" in r.stderr, r.stderr
    r = _run(bridge_run, "export", "--megatron", str(run), "--adapter-only", "--out", str(tmp_path / "x"))
    assert r.returncode == 1 and "give its base checkpoint with --base" in r.stderr, r.stderr
    assert not (tmp_path / "x").exists()
