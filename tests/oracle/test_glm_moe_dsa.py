"""GLM-5's DeepSeek Sparse Attention indexer, converted. transformers'
GlmMoeDsaIndexer rotates the first qk_rope_head_dim channels of each indexer
head, megatron-core 0.16.1's DSAIndexer the last, so the mapping swaps the two
halves of every head of wq_b, of wk and of k_norm. Megatron-Core cannot build
multi-latent attention on this CPU machine (no Transformer Engine), but its
DSAIndexer alone is plain torch: built from the config bridge-run writes and
loaded with the indexer tensors of the torch_dist checkpoint, it must score
every key of every query as transformers' indexer does (which keys attention
keeps follows from the scores), and the weights taken as they are must not."""
from __future__ import annotations

import subprocess

import pytest

import tiny_models

FAMILY = "glm5"


def _hadamard(n: int):
    import torch

    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def _torch_dist_state(ckpt_dir, out_file):
    import glob
    import os

    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    meta = glob.glob(os.path.join(ckpt_dir, "**", ".metadata"), recursive=True)
    assert len(meta) == 1, meta
    dcp_to_torch_save(os.path.dirname(meta[0]), out_file)
    return torch.load(out_file, weights_only=False)


@pytest.mark.parametrize("layer", [0, 1])
def test_glm_moe_dsa_indexer_scores_as_transformers(bridge_run, tiny_checkpoints, mcore, tmp_path, layer):
    import torch
    import transformers
    from megatron.core.transformer.experimental_attention_variant import dsa
    from megatron.core.transformer.torch_norm import WrappedTorchNorm

    import megatron_oracle

    ckpt = tiny_checkpoints(FAMILY)
    out = tmp_path / "mcore"
    r = subprocess.run([str(bridge_run.path), "import", "--hf", str(ckpt.path), "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    state = _torch_dist_state(out, tmp_path / "state.pt")
    meg = bridge_run.config(str(ckpt.path))["megatron"]
    assert meg["experimental_attention_variant"] == "dsa"
    cfg = megatron_oracle.make_transformer_config(megatron_oracle.route_megatron_config(meg))
    cfg.params_dtype = torch.float32

    class Linear(torch.nn.Module):
        """A 'duplicated' linear layer as the local spec would build it."""

        def __init__(self, input_size, output_size, *, bias, **_):
            super().__init__()
            assert not bias
            self.weight = torch.nn.Parameter(torch.empty(output_size, input_size))

        def forward(self, x):
            return torch.nn.functional.linear(x, self.weight), None

    sub = dsa.DSAIndexerSubmodules(linear_wq_b=Linear, linear_wk=Linear, k_norm=WrappedTorchNorm,
                                   linear_weights_proj=Linear)
    indexer = dsa.DSAIndexer(cfg, sub)
    prefix = f"decoder.layers.{layer}.self_attention.core_attention.indexer."
    own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and "_extra_state" not in k}
    assert set(own) == set(indexer.state_dict()), (sorted(own), sorted(indexer.state_dict()))

    # megatron-core's rotation needs fast_hadamard_transform and bf16: the same
    # orthonormal Hadamard rotation in plain torch.
    h = _hadamard(cfg.dsa_indexer_head_dim) * cfg.dsa_indexer_head_dim ** -0.5
    orig_rotate = dsa.rotate_activation
    dsa.rotate_activation = lambda x: x @ h.to(x.dtype)

    model = transformers.AutoModelForCausalLM.from_pretrained(ckpt.path, dtype=torch.float32).eval()
    attn = model.model.layers[layer].self_attn
    seq = 12
    torch.manual_seed(layer)
    x = torch.randn(1, seq, model.config.hidden_size)
    position_ids = torch.arange(seq)[None]
    cos_sin = model.model.rotary_emb(x, position_ids)
    mask = torch.full((seq, seq), float("-inf")).triu(1)
    scores = {}
    orig_topk = torch.Tensor.topk

    def recording_topk(self, *a, **kw):
        scores.setdefault("hf", self.detach().clone())
        return orig_topk(self, *a, **kw)

    try:
        with torch.no_grad():
            qr = attn.q_a_layernorm(attn.q_a_proj(x))
            torch.Tensor.topk = recording_topk
            hf_topk = attn.indexer(x, qr, cos_sin, mask[None], position_ids)
            torch.Tensor.topk = orig_topk

            def megatron_scores(weights):
                indexer.load_state_dict(weights)
                s, idx = indexer.forward_with_scores(x.transpose(0, 1), qr.transpose(0, 1), mask=mask)
                return s, idx

            got, got_topk = megatron_scores(own)
            hf_names = {"linear_wq_b.weight": "wq_b.weight", "linear_wk.weight": "wk.weight",
                        "k_norm.weight": "k_norm.weight", "k_norm.bias": "k_norm.bias",
                        "linear_weights_proj.weight": "weights_proj.weight"}
            as_is = {k: attn.indexer.state_dict()[v] for k, v in hf_names.items()}
            naive, _ = megatron_scores(as_is)
    finally:
        torch.Tensor.topk = orig_topk
        dsa.rotate_activation = orig_rotate

    want = scores["hf"]
    causal = torch.isfinite(want)
    assert torch.equal(causal, torch.isfinite(got))
    # k_norm's epsilon is layernorm_epsilon in megatron-core (1e-5 here),
    # 1e-6 in transformers: the scores agree to well below bf16's resolution.
    torch.testing.assert_close(got[causal], want[causal], rtol=1e-4, atol=1e-4)
    topk = min(model.config.index_topk, seq)
    assert topk < seq  # the indexer drops keys in this test
    for q in range(topk, seq):  # rows with more keys than the top-k keeps
        assert set(got_topk[0, q].tolist()) == set(hf_topk[0, q].tolist()), q
    assert not torch.allclose(naive[causal], want[causal], rtol=1e-2, atol=1e-3), \
        "the indexer's weights taken as they are should score otherwise"


def test_glm_moe_dsa_published_config_is_read_as_glm5(bridge_run, tmp_path):
    """The published GLM-5 config: DSA in every layer with its indexer sizes,
    the first three layers dense, one MTP layer."""
    pub = tiny_models.published_config(tiny_models.FAMILY_BY_ID[FAMILY])
    if pub is None:
        pytest.skip("no published GLM-5 config.json")
    meg = bridge_run.config(str(tiny_models.write_config_dir(pub, tmp_path / "hf")))["megatron"]
    assert meg["experimental_attention_variant"] == "dsa"
    assert (meg["dsa_indexer_n_heads"], meg["dsa_indexer_head_dim"], meg["dsa_indexer_topk"]) == (32, 128, 2048)
    assert meg["moe_layer_freq"] == [0, 0, 0] + [1] * 75
    assert meg["mtp_num_layers"] == 1
    assert (meg["q_lora_rank"], meg["qk_head_dim"], meg["qk_pos_emb_head_dim"], meg["v_head_dim"]) == (2048, 192, 64, 256)
    assert meg["rotary_base"] == 1000000 and meg["rotary_scaling_factor"] == 1.0
