"""The test suite's view of the Megatron-Core models: the builders live in
the live bridge's package (python/bridge/megatron_model.py), which the
provider uses too; here a model megatron-core cannot build is a skip, and
logits are compared with transformers'."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python"))

from bridge import megatron_model as _built  # noqa: E402
from bridge.megatron_model import *  # noqa: E402,F401,F403
from bridge.megatron_model import (  # noqa: E402,F401
    POST_LAYERNORM_UNSUPPORTED,
    MAMBA_FORWARD_UNAVAILABLE,
    MLA_UNSUPPORTED,
    MegatronUnavailable,
    Unsupported,
    _apply_layer_choices,
    _mamba_cpu_patches,
    build_mamba_model,
    language_model_prefix,
)


def build_gpt_model(meg: dict, with_mtp: bool = False):
    """bridge.megatron_model.build_gpt_model; a model megatron-core cannot
    build on this machine skips the test."""
    try:
        return _built.build_gpt_model(meg, with_mtp=with_mtp)
    except Unsupported as e:
        import pytest

        pytest.skip(str(e))


def state_dict_shapes(model) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the model's state dict, without ``_extra_state``."""
    out = {}
    for name, value in model.state_dict().items():
        if name.endswith("_extra_state"):
            continue
        out[name] = tuple(value.shape)
    return out


def assert_logits_match(bridge_run, ckpt, mg, atol: float, legacy_state: dict | None = None,
                        padded_vocab: int | None = None) -> None:
    """dist_checkpointing.load of the import in `mg` (or, with
    `legacy_state`, load_state_dict of a legacy checkpoint's model dict,
    strict) into a GPTModel built from the converted config; the same input
    gives the HF model's logits within `atol` (fp32, CPU), over the real
    vocabulary when the model holds a padded one."""
    import torch
    import transformers
    from megatron.core import dist_checkpointing

    meg = dict(bridge_run.config(str(ckpt.path))["megatron"], params_dtype="float32", bf16=False, fp16=False)
    if meg.get("hybrid_override_pattern"):
        import pytest

        pytest.skip(MAMBA_FORWARD_UNAVAILABLE)
    seq = 16
    if meg.get("window_size") and meg["window_size"][0] >= seq:
        # Megatron-Core builds the sliding-window mask on CUDA; a window wider
        # than the 16-token input masks nothing, so drop it on CPU (the
        # window_size mapping itself is checked in test_config_semantics).
        meg["window_size"] = None
    if padded_vocab:
        meg["vocab_size"] = padded_vocab
    model = build_gpt_model(meg).eval()
    if legacy_state is not None:
        model.load_state_dict(legacy_state, strict=True)
    else:
        # A VLM's language model is loaded from under its prefix (the vision
        # tower's keys are the HF module's, not this model's).
        prefix = language_model_prefix(meg)
        state = dist_checkpointing.load(model.sharded_state_dict(prefix=prefix), str(mg / "iter_0000000"))
        # load() also returns the common state (checkpoint_version, iteration, ...).
        weights = {k[len(prefix):]: v for k, v in state.items() if k[len(prefix):] in model.state_dict()}
        model.load_state_dict(weights, strict=True)

    auto = getattr(transformers, ckpt.family.auto_class)
    hf = auto.from_pretrained(str(ckpt.path), dtype=torch.float32).eval()
    vocab = hf.config.get_text_config().vocab_size
    torch.manual_seed(0)
    tokens = torch.randint(0, vocab, (2, seq))
    positions = torch.arange(seq).unsqueeze(0).expand(2, -1)
    if meg.get("position_embedding_type") == "mrope":
        # Text alone: the time, height and width positions are all the token's.
        positions = positions.unsqueeze(0).expand(3, -1, -1)
    mask = torch.triu(torch.ones(seq, seq, dtype=torch.bool), 1)[None, None]
    with torch.no_grad():
        ours = model(tokens, positions, mask).float()
        ref = hf(tokens).logits.float()
    ours = ours[..., : ref.shape[-1]]
    assert ours.shape == ref.shape
    diff = (ours - ref).abs().max().item()
    assert diff <= atol, f"max |logits - HF logits| = {diff}"
