"""Nemotron-H against the real megatron-core: the import loaded by
dist_checkpointing into a MambaModel (megatron_oracle.build_mamba_model)
gives back, parameter by parameter, the tensors transformers wrote.

This is the value-level check of the Mamba layout: megatron-core itself puts
in_proj back together from its torch_dist parts (.z .x .B .C .dt) and conv1d
from (.x .B .C), at the TP the import was cut for; each must equal the HF
tensor bit for bit. (No logits: megatron-core's Mamba mixer computes only with
mamba_ssm's kernels, megatron_oracle.MAMBA_FORWARD_UNAVAILABLE.)
"""

from __future__ import annotations

import subprocess

import pytest

import megatron_oracle
import tiny_models

FAMILIES = [f.id for f in tiny_models.FAMILIES if f.mapping == "nemotron_h"]

# Megatron parameter (layer-relative) -> HF tensor (layer-relative), for the
# parameters that are the HF tensor itself.
SAME = {
    "mixer.in_proj.weight": "mixer.in_proj.weight",
    "mixer.conv1d.weight": "mixer.conv1d.weight",
    "mixer.conv1d.bias": "mixer.conv1d.bias",
    "mixer.A_log": "mixer.A_log",
    "mixer.D": "mixer.D",
    "mixer.dt_bias": "mixer.dt_bias",
    "mixer.norm.weight": "mixer.norm.weight",
    "mixer.out_proj.weight": "mixer.out_proj.weight",
    "norm.weight": "norm.weight",
    "input_layernorm.weight": "norm.weight",
    "pre_mlp_layernorm.weight": "norm.weight",
    "mlp.linear_fc1.weight": "mixer.up_proj.weight",
    "mlp.linear_fc2.weight": "mixer.down_proj.weight",
    "mlp.router.weight": "mixer.gate.weight",
    "mlp.router.expert_bias": "mixer.gate.e_score_correction_bias",
    "mlp.shared_experts.linear_fc1.weight": "mixer.shared_experts.up_proj.weight",
    "mlp.shared_experts.linear_fc2.weight": "mixer.shared_experts.down_proj.weight",
    "self_attention.linear_proj.weight": "mixer.o_proj.weight",
}


@pytest.mark.parametrize("tp", [1, 2])
@pytest.mark.parametrize("family_id", FAMILIES, ids=tiny_models.family_param_id)
def test_megatron_core_loads_every_mamba_tensor_as_hf_wrote_it(bridge_run, tiny_checkpoints, mcore, tmp_path,
                                                               family_id, tp):
    import re

    import torch
    from megatron.core import dist_checkpointing
    from safetensors.torch import load_file

    ckpt = tiny_checkpoints(family_id)
    out = tmp_path / "mg"
    r = subprocess.run([str(bridge_run.path), "import", "--hf", str(ckpt.path), "--out", str(out), "--tp", str(tp),
                        "--quiet"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    meg = dict(bridge_run.config(str(ckpt.path))["megatron"], params_dtype="float32", bf16=False)
    model = megatron_oracle.build_mamba_model(meg)
    state = dist_checkpointing.load(model.sharded_state_dict(), str(out / "iter_0000000"))
    weights = {k: v for k, v in state.items() if k in model.state_dict()}
    model.load_state_dict(weights, strict=True)

    hf = {}
    for f in sorted(ckpt.path.glob("*.safetensors")):
        hf.update(load_file(str(f)))
    checked, errors = 0, []
    for name, value in model.state_dict().items():
        if name.endswith("_extra_state"):
            continue
        m = re.match(r"decoder\.layers\.(\d+)\.(.+)$", name)
        if m and m.group(2) in SAME:
            source = f"backbone.layers.{m.group(1)}.{SAME[m.group(2)]}"
        elif m and (e := re.match(r"mlp\.experts\.local_experts\.(\d+)\.linear_fc([12])\.weight$", m.group(2))):
            proj = "up_proj" if e.group(2) == "1" else "down_proj"
            source = f"backbone.layers.{m.group(1)}.mixer.experts.{e.group(1)}.{proj}.weight"
        else:
            source = {"embedding.word_embeddings.weight": "backbone.embeddings.weight",
                      "decoder.final_norm.weight": "backbone.norm_f.weight",
                      "output_layer.weight": "lm_head.weight"}.get(name)
        if source is None:
            continue  # linear_qkv: the GQA interleave, checked by the GPT families' logits
        want = hf[source].to(torch.float32)
        if value.shape != want.shape or not torch.equal(value.to(torch.float32), want):
            errors.append(f"{name} != {source}")
        checked += 1
    assert not errors, "\n".join(errors)
    # Every Mamba tensor of every Mamba layer was compared.
    mamba_layers = meg["hybrid_override_pattern"].count("M")
    assert checked >= mamba_layers * 9 + 3, checked
