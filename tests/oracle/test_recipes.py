"""Recipes: what bridge-run emits is accepted by megatron-core's own classes.

For every compiled recipe (tests/golden/recipes holds each one's two forms,
checked byte for byte by ctest golden-recipes):
- megatron-core's TransformerConfig (MLATransformerConfig for DeepSeek) takes
  the model's config, as import computes it, with the recipe's parallel layout
  from the Megatron-Bridge YAML: its __post_init__ checks heads, query groups,
  experts, pipeline stages, virtual stages and sequence parallelism;
- parallel_state's RankGenerator places every GPU exactly once in the dense
  (tp, cp, dp, pp) and the expert (etp, ep, dp, pp) grids;
- the micro-batch calculator accepts the global batch for that data-parallel
  size;
- the Megatron-LM arguments say what the YAML says.
And the command line: recipe list/show, import --recipe. And the numbers
recipe list gives: the parameter count against transformers' model, the
training FLOPs per token against Megatron-Bridge 0.6.2's own formula.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest

import megatron_oracle

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden" / "recipes"
MODELS = ROOT / "recipes" / "models"
RECIPES = sorted(p.stem for p in GOLDEN.glob("*.yaml"))


def _run(bridge_run, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(bridge_run.path), *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def listing(bridge_run) -> dict[str, dict]:
    r = _run(bridge_run, "recipe", "list", "--json")
    assert r.returncode == 0, r.stderr
    return {x["name"]: x for x in json.loads(r.stdout)}


def test_the_goldens_name_every_recipe(listing):
    assert sorted(listing) == RECIPES


def _transformers_parameters(config_path: Path) -> int:
    """transformers' own count of the full-size model a published config.json
    describes, built on the meta device (no memory): every parameter, and the
    router's expert bias, a buffer the checkpoint stores."""
    import torch
    import transformers

    d = json.loads(config_path.read_text(), parse_constant=float)
    d.pop("quantization_config", None)
    d.pop("auto_map", None)
    d.pop("transformers_version", None)
    cfg = transformers.AutoConfig.for_model(d.pop("model_type"), **d)
    auto = transformers.AutoModelForImageTextToText if "vision_config" in d else transformers.AutoModelForCausalLM
    with torch.device("meta"):
        model = auto.from_config(cfg)
    buffers = sum(b.numel() for n, b in model.named_buffers() if n.endswith(("expert_bias", "e_score_correction_bias")))
    return sum(p.numel() for p in model.parameters()) + buffers


@pytest.mark.parametrize("model", sorted({p.stem for p in MODELS.glob("*.json") if not p.stem.endswith(".defaults")}))
def test_parameter_count_is_transformers_own(listing, model):
    """bridgec's count from config.json (GQA, MLA, output-gated attention,
    Gated DeltaNet, Mamba, squared-ReLU MLPs, experts, a VLM's tower; norms
    and biases left out) is within 0.1% of transformers' model of the same
    config: the memory estimate starts from it."""
    ours = {x["parameters"] for x in listing.values() if x["model"].replace("/", "__") == model}
    assert len(ours) == 1, f"{model}: no recipe, or recipes disagree: {ours}"
    want = _transformers_parameters(MODELS / f"{model}.json")
    got = ours.pop()
    assert abs(got - want) <= 1e-3 * want, f"{model}: bridgec counts {got:,.0f}, transformers {want:,}"


@pytest.mark.parametrize("defaults", sorted(p.name for p in MODELS.glob("*.defaults.json")))
def test_class_defaults_beside_a_config_are_transformers_own(defaults):
    """What bridgec reads for the keys a published config leaves out is what
    the installed transformers' config class gives (scripts/class_defaults.py
    rewrites the file when transformers changes its defaults)."""
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    import class_defaults

    written = json.loads((MODELS / defaults).read_text())
    fresh = class_defaults.class_defaults(MODELS / defaults.replace(".defaults.json", ".json"))
    written.pop("transformers"), fresh.pop("transformers")
    assert written == fresh


def _args(text: str) -> dict[str, str | bool]:
    words = shlex.split("\n".join(l for l in text.splitlines() if not l.startswith("#")).replace("\\\n", " "))
    out: dict[str, str | bool] = {}
    for i, w in enumerate(words):
        if w.startswith("--"):
            nxt = words[i + 1] if i + 1 < len(words) else None
            out[w] = nxt if nxt is not None and not nxt.startswith("--") else True
    return out


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_is_accepted_by_megatron_core(bridge_run, mcore_classes, listing, name):
    import torch
    import yaml
    from megatron.core.num_microbatches_calculator import ConstantNumMicroBatchesCalculator
    from megatron.core.parallel_state import RankGenerator

    info = listing[name]
    r = _run(bridge_run, "recipe", "show", name, "--format", "megatron-bridge-yaml")
    assert r.returncode == 0, r.stderr
    y = yaml.safe_load(r.stdout)
    m, t = y["model"], y["train"]
    gpus = info["gpus"]
    tp, pp, cp = m["tensor_model_parallel_size"], m["pipeline_model_parallel_size"], m["context_parallel_size"]
    ep, etp = m["expert_model_parallel_size"], m["expert_tensor_parallel_size"]
    assert m["seq_length"] == y["dataset"]["seq_length"]  # Megatron-Bridge's validate() asks for this

    # The model as import computes it, with the recipe's layout.
    org, _, rest = info["model"].partition("/")
    meg = bridge_run.config(str(MODELS / f"{org}__{rest}.json"))["megatron"]
    routed = megatron_oracle.route_megatron_config(meg)
    kw = routed.tc_kwargs
    kw.update(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, context_parallel_size=cp,
              expert_model_parallel_size=ep, expert_tensor_parallel_size=etp,
              sequence_parallel=m["sequence_parallel"],
              virtual_pipeline_model_parallel_size=m["virtual_pipeline_model_parallel_size"],
              bf16=True, params_dtype=torch.bfloat16, pipeline_dtype=torch.bfloat16)
    for key in ("num_layers_in_first_pipeline_stage", "num_layers_in_last_pipeline_stage", "recompute_granularity",
                "recompute_method", "recompute_num_layers"):
        if key in m:
            kw[key] = m[key]
    cfg = megatron_oracle.make_transformer_config(routed)  # __post_init__ raises on a bad layout
    assert cfg.tensor_model_parallel_size == tp

    # Every GPU once in the dense grid and once in the expert grid.
    dense = RankGenerator(tp=tp, ep=1, dp=gpus // (tp * pp * cp), pp=pp, cp=cp, order="tp-cp-ep-dp-pp")
    expert = RankGenerator(tp=etp, ep=ep, dp=gpus // (etp * ep * pp), pp=pp, cp=1, order="tp-ep-dp-pp")
    for grid in (dense, expert):
        assert grid.world_size == gpus
        assert sorted(r for g in grid.get_ranks("tp") for r in g) == list(range(gpus))
    ConstantNumMicroBatchesCalculator(t["global_batch_size"], t["micro_batch_size"], gpus // (tp * pp * cp),
                                      False, 0)  # asserts divisibility

    # The Megatron-LM arguments say the same.
    r = _run(bridge_run, "recipe", "show", name, "--format", "megatron-lm-args")
    assert r.returncode == 0, r.stderr
    a = _args(r.stdout)
    assert int(a["--tensor-model-parallel-size"]) == tp and int(a["--pipeline-model-parallel-size"]) == pp
    assert int(a["--context-parallel-size"]) == cp and int(a["--expert-model-parallel-size"]) == ep
    assert int(a["--expert-tensor-parallel-size"]) == etp
    assert ("--sequence-parallel" in a) == m["sequence_parallel"]
    assert int(a["--seq-length"]) == m["seq_length"]
    assert int(a["--micro-batch-size"]) == t["micro_batch_size"]
    assert int(a["--global-batch-size"]) == t["global_batch_size"]
    assert int(a["--train-iters"]) == t["train_iters"]
    assert float(a["--lr"]) == y["optimizer"]["lr"] and float(a["--min-lr"]) == y["optimizer"]["min_lr"]
    assert float(a["--weight-decay"]) == y["scheduler"]["start_weight_decay"]
    assert int(a["--num-layers"]) == meg["num_layers"] and int(a["--hidden-size"]) == meg["hidden_size"]
    if m["virtual_pipeline_model_parallel_size"]:
        assert int(a["--num-virtual-stages-per-pipeline-rank"]) == m["virtual_pipeline_model_parallel_size"]
    if info["mode"] == "peft":
        assert y["peft"]["_target_"] == "megatron.bridge.peft.lora.LoRA"
        assert "Megatron-LM has no LoRA" in r.stderr
    else:
        assert "peft" not in y


def test_recipe_show_errors(bridge_run):
    r = _run(bridge_run, "recipe", "show", "llama9_pretrain")
    assert r.returncode == 1 and "no recipe named 'llama9_pretrain'" in r.stderr
    r = _run(bridge_run, "recipe", "show", "llama3_1_8b_sft", "--format", "toml")
    assert r.returncode == 1 and "unknown recipe format 'toml'" in r.stderr
    r = _run(bridge_run, "recipe", "fly")
    assert r.returncode == 2 and "recipe needs 'list' or 'show NAME'" in r.stderr
    r = _run(bridge_run, "recipe", "show", "llama3_1_8b_sft", "--checkpoint", "/ckpt/llama")
    assert "pretrained_checkpoint: /ckpt/llama" in r.stdout


def test_import_takes_the_layout_of_a_recipe(bridge_run, tiny_checkpoints, tmp_path):
    ckpt = tiny_checkpoints("llama3.2-1b")
    mg = tmp_path / "mg"
    r = _run(bridge_run, "import", "--hf", str(ckpt.path), "--out", str(mg), "--recipe", "llama3_1_8b_sft")
    assert r.returncode == 0, r.stderr
    assert "recipe llama3_1_8b_sft was sized for meta-llama/Llama-3.1-8B" in r.stderr
    side = json.loads((mg / "iter_0000000" / "bridge.json").read_text())
    assert side["layout"]["tp"] == 2 and side["layout"]["pp"] == 1
    # Another family is refused; so is a layout given twice.
    other = tiny_checkpoints("qwen3-8b")
    r = _run(bridge_run, "import", "--hf", str(other.path), "--out", str(tmp_path / "q"), "--recipe",
             "llama3_1_8b_sft")
    assert r.returncode == 1 and "recipe llama3_1_8b_sft is for meta-llama/Llama-3.1-8B (mapping llama)" in r.stderr
    r = _run(bridge_run, "import", "--hf", str(ckpt.path), "--out", str(tmp_path / "x"), "--recipe",
             "llama3_1_8b_sft", "--tp", "4")
    assert r.returncode == 2 and "--recipe gives the layout" in r.stderr


def test_megatron_core_refuses_what_bridgec_refuses(bridge_run, mcore_classes):
    """The control for the test above: the same route with a layout bridgec
    rejects (BR4010, tp 3 for 32 heads and 8 groups) is refused by
    TransformerConfig too, so that test can fail."""
    meg = bridge_run.config(str(MODELS / "meta-llama__Llama-3.1-8B.json"))["megatron"]
    routed = megatron_oracle.route_megatron_config(meg)
    routed.tc_kwargs.update(tensor_model_parallel_size=3, sequence_parallel=True)
    with pytest.raises(ValueError, match="tensor_model_parallel_size"):
        megatron_oracle.make_transformer_config(routed)


# ---- FLOPs per token against Megatron-Bridge's own formula ---------------------

# scripts/setup.sh downloads it (pinned by sha256).
MBRIDGE_WHEEL = ROOT / "build" / "downloads" / "megatron_bridge-0.6.2-py3-none-any.whl"

# Families Megatron-Bridge 0.6.2's num_floating_point_operations counts
# otherwise than the model computes, so no agreement is asked of them.
FLOPS_NOT_COMPARED = {
    "nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16": (
        "Megatron-Bridge's hybrid formula (mamba_layer_flops) takes Mamba-2's inner width as 2 x hidden_size "
        "(5376), while Nemotron 3 Nano's mixer is mamba_num_heads x mamba_head_dim = 64 x 64 = 4096 wide; "
        "its in_proj (25%), out_proj and scan (31% each) larger than the model's"
    ),
}


@pytest.fixture(scope="module")
def mbridge_flops(tmp_path_factory):
    """Megatron-Bridge 0.6.2's num_floating_point_operations, loaded from its
    own file in the wheel. The package does not import against this
    machine's transformers and megatron-core, so the few names flop_utils.py
    imports are stand-ins holding only what the formula calls (the padded
    vocabulary, the hybrid pattern's layer counts); the formula is theirs."""
    import importlib.util
    import sys
    import types
    import zipfile

    assert MBRIDGE_WHEEL.exists(), f"no Megatron-Bridge wheel at {MBRIDGE_WHEEL}: run scripts/setup.sh"
    site = tmp_path_factory.mktemp("megatron-bridge")
    with zipfile.ZipFile(MBRIDGE_WHEEL) as wheel:
        wheel.extract("megatron/bridge/training/utils/flop_utils.py", site)
    FLOP_UTILS = site / "megatron" / "bridge" / "training" / "utils" / "flop_utils.py"

    class Symbols:
        MAMBA, ATTENTION, MLP, MOE, GDN, PIPE = "M", "*", "-", "E", "G", "|"

    def get_hybrid_layer_counts(pattern):
        return {s: pattern.count(s) for s in "M*-EG"}

    def parse_hybrid_pattern(pattern):
        return types.SimpleNamespace(main_pattern=pattern, mtp_pattern=None, mtp_num_depths=0)

    def calculate_padded_vocab_size(vocab_size, divisible_by, tp, logging_enabled=True):
        multiple = divisible_by * tp
        return (vocab_size + multiple - 1) // multiple * multiple

    class LoRA:  # isinstance() target only
        pass

    stand_ins = {
        "megatron.core.models.hybrid": {},
        "megatron.core.models.hybrid.hybrid_layer_allocation": dict(
            Symbols=Symbols, get_hybrid_layer_counts=get_hybrid_layer_counts, parse_hybrid_pattern=parse_hybrid_pattern
        ),
        "megatron.bridge": {},
        "megatron.bridge.data": {},
        "megatron.bridge.data.packing": {},
        "megatron.bridge.data.packing.algorithms": dict(calculate_avg_seqlen=None),
        "megatron.bridge.peft": {},
        "megatron.bridge.peft.lora": dict(LoRA=LoRA),
        "megatron.bridge.training": {},
        "megatron.bridge.training.config": dict(ConfigContainer=object),
        "megatron.bridge.utils": {},
        "megatron.bridge.utils.vocab_utils": dict(calculate_padded_vocab_size=calculate_padded_vocab_size),
    }
    saved = {name: sys.modules.get(name) for name in stand_ins}
    try:
        for name, attrs in stand_ins.items():
            m = types.ModuleType(name)
            m.__dict__.update(attrs)
            sys.modules[name] = m
        spec = importlib.util.spec_from_file_location("mbridge_flop_utils", FLOP_UTILS)
        flop_utils = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(flop_utils)
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old
    return flop_utils.num_floating_point_operations


_megatron_configs: dict[str, dict] = {}


def _megatron_config(bridge_run, model: str, tmp_path_factory) -> dict:
    """The model's Megatron config as import computes it from config.json."""
    if model not in _megatron_configs:
        stem = model.replace("/", "__")
        d = tmp_path_factory.mktemp(stem)
        (d / "config.json").write_text((MODELS / f"{stem}.json").read_text())
        defaults = MODELS / f"{stem}.defaults.json"
        if defaults.exists():
            (d / defaults.name).write_text(defaults.read_text())
        r = _run(bridge_run, "config", "--hf", str(d), "--json")
        assert r.returncode == 0, r.stderr
        _megatron_configs[model] = json.loads(r.stdout)["megatron"]
    return _megatron_configs[model]


def mbridge_flops_per_token(flops, megatron: dict, seq_length: int, tp: int, global_batch: int) -> float:
    """Megatron-Bridge's FLOPs of one global batch over its tokens."""
    from types import SimpleNamespace

    model = dict(megatron, seq_length=seq_length, tensor_model_parallel_size=tp)
    if megatron.get("is_hybrid_model"):
        model["hybrid_layer_pattern"] = megatron.get("hybrid_override_pattern")
    cfg = SimpleNamespace(model=SimpleNamespace(**model), peft=None)
    return flops(cfg, global_batch) / (global_batch * seq_length)


@pytest.mark.parametrize("name", RECIPES)
def test_flops_per_token_is_megatron_bridges(bridge_run, listing, mbridge_flops, tmp_path_factory, name):
    """bridgec's training FLOPs per token (recipe list's flops_per_token) are
    within 2% of Megatron-Bridge 0.6.2's num_floating_point_operations on the
    same Megatron config (import's, from config.json), seq_length, TP and
    global batch; the ratio is printed (docs/recipes.md's table)."""
    import yaml

    info = listing[name]
    r = _run(bridge_run, "recipe", "show", name, "--format", "megatron-bridge-yaml")
    assert r.returncode == 0, r.stderr
    y = yaml.safe_load(r.stdout)
    theirs = mbridge_flops_per_token(
        mbridge_flops,
        _megatron_config(bridge_run, info["model"], tmp_path_factory),
        y["model"]["seq_length"],
        y["model"]["tensor_model_parallel_size"],
        y["train"]["global_batch_size"],
    )
    ours = info["flops_per_token"]
    print(f"{name}: ours {ours / 1e9:.3f} GFLOPs/token, Megatron-Bridge {theirs / 1e9:.3f}, ratio {ours / theirs:.4f}")
    if info["model"] in FLOPS_NOT_COMPARED:
        pytest.skip(f"{FLOPS_NOT_COMPARED[info['model']]} (ratio {ours / theirs:.4f})")
    assert abs(ours / theirs - 1) <= 0.02, f"{name}: ours {ours:.4e}, Megatron-Bridge {theirs:.4e}"
