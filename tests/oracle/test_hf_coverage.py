"""(b) The HF side of every plan against a checkpoint written by transformers.

Every tensor in the saved safetensors must be consumed exactly once by the plan
(as a source of a Megatron tensor, a tie's copy, or an ignored name); every
plan source must exist in the checkpoint; and the shapes of the sources must
compose to the Megatron global shape the plan states.

Each test runs on two config layouts of the same tiny model:
  * "saved": the config.json that transformers' save_pretrained wrote;
  * "published": the shrunk published config.json, written as is (the layout
    of the real Hub files: rope_theta, rope_scaling, torch_dtype).
"""

from __future__ import annotations

import math
from collections import Counter

import pytest

import tiny_models

FORMATS = ["saved", "published"]


def _config_dir(fmt, family_id, tiny_checkpoints, published_format_dirs):
    if fmt == "saved":
        return tiny_checkpoints(family_id).path
    if not tiny_models.published_config(tiny_models.FAMILY_BY_ID[family_id]):
        pytest.skip(f"no published config in {tiny_models.SHARED_HF_CONFIGS}")
    return published_format_dirs(family_id)


def _recipe_op(tensor: dict) -> str | None:
    """None for an identity copy, else the op name of 'op(a, b, ...)'."""
    recipe = tensor["recipe"]
    if "(" not in recipe:
        assert tensor["sources"] == [recipe.rstrip("?")], tensor
        return None
    return recipe.split("(", 1)[0].strip()


def _nested_shape(recipe: str, shapes: dict) -> tuple:
    """The shape a chain of layout ops gives from the HF shapes (independent of
    the runtime): expert drops dim 0, transpose swaps two dims, an interleaved
    gate/up and a transform (@swap_halves) keep their shape (rows must pair up)."""
    recipe = recipe.strip()
    if "(" not in recipe:
        return tuple(shapes[recipe.rstrip("?")])
    op, rest = recipe.split("(", 1)
    inner = rest[: rest.rindex(")")]
    depth, args, cur = 0, [], ""
    for ch in inner:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            args.append(cur)
            cur = ""
        else:
            cur += ch
    args.append(cur)
    x = _nested_shape(args[0], shapes)
    op = op.strip()
    if op == "expert":
        return x[1:]
    if op == "transpose":
        assert len(x) == 2, recipe
        return (x[1], x[0])
    if op == "gate_up_interleaved":
        assert x[0] % 2 == 0, recipe
        return x
    if op == "@":
        # A registered transform: @swap_halves keeps the shape (halves of dim 0).
        assert x[0] % 2 == 0, recipe
        return x
    if op == "identity":
        return x
    raise AssertionError(f"no shape rule for {op!r} in {recipe}")


@pytest.fixture(params=tiny_models.family_ids(), ids=tiny_models.family_param_id)
def family_id(request):
    return request.param


@pytest.fixture(params=FORMATS)
def fmt(request):
    return request.param


def test_plan_consumes_every_hf_tensor_exactly_once(
    bridge_run, tiny_checkpoints, published_format_dirs, family_id, fmt
):
    ckpt = tiny_checkpoints(family_id)
    plan = bridge_run.plan(str(_config_dir(fmt, family_id, tiny_checkpoints, published_format_dirs)))
    assert plan["mapping"] == ckpt.family.mapping

    uses = Counter()
    sliced = {}  # stacked HF tensor read through 'expert' -> expert indices read
    blocks = {}  # HF tensor read through 'rows' -> [(first row, rows)] read
    for t in plan["tensors"]:
        for src, piece, (first, rows, groups) in zip(t["sources"], t["source_slices"], t["source_rows"]):
            if piece >= 0:
                sliced.setdefault(src, []).append(piece)
            elif first >= 0:
                blocks.setdefault(src, []).append((first, rows, groups))
            else:
                uses[src] += 1
    for src, pieces in sliced.items():
        assert sorted(pieces) == list(range(ckpt.tensors[src][0])), f"{src}: experts read {sorted(pieces)}"
        uses[src] += 1
    for src, read in blocks.items():
        # The row blocks tile each row group of the tensor: each row read once.
        groups = {g for _, _, g in read}
        assert len(groups) == 1, (src, read)
        ends = [0] + [first + rows for first, rows, _ in sorted(read)]
        assert [first for first, _, _ in sorted(read)] == ends[:-1], (src, read)
        assert ends[-1] * groups.pop() == ckpt.tensors[src][0], (src, read)
        uses[src] += 1
    uses.update(tie["copy"] for tie in plan["ties"])
    uses.update(plan["ignored"])

    twice = sorted(k for k, n in uses.items() if n > 1)
    assert not twice, f"HF names used more than once by the plan: {twice}"

    keys = set(ckpt.tensors)
    unconsumed = sorted(keys - set(uses))
    assert not unconsumed, f"checkpoint tensors the plan never reads: {unconsumed}"

    # Optional op inputs (FP8 scales) may be absent from a bf16 checkpoint.
    sources = {s for t in plan["tensors"] for s, opt in zip(t["sources"], t["optional_sources"]) if not opt}
    missing = sorted(sources - keys)
    assert not missing, f"plan sources absent from the checkpoint: {missing}"

    for tie in plan["ties"]:
        assert tie["of"] in sources, f"tie {tie} copies a tensor that no Megatron tensor reads"
        if tie["copy"] in keys:  # a tied checkpoint may still carry the copy
            assert ckpt.tensors[tie["copy"]] == ckpt.tensors[tie["of"]], tie

    # The tie flag of the HF model decides whether lm_head is a tie or a tensor.
    tied = ckpt.config_json.get("tie_word_embeddings")
    tie_copies = {tie["copy"] for tie in plan["ties"]}
    assert ("lm_head.weight" in tie_copies) == bool(tied), (plan["ties"], tied)


def test_plan_shapes_compose_from_hf_shapes(
    bridge_run, tiny_checkpoints, published_format_dirs, family_id, fmt
):
    ckpt = tiny_checkpoints(family_id)
    cdir = str(_config_dir(fmt, family_id, tiny_checkpoints, published_format_dirs))
    plan = bridge_run.plan(cdir)
    meg = bridge_run.config(cdir)["megatron"]
    q_rows = meg["num_attention_heads"] * meg["kv_channels"]
    kv_rows = meg["num_query_groups"] * meg["kv_channels"]

    errors = []
    # Row blocks ('rows') of one HF tensor must add up to its rows.
    block_rows: dict = {}
    for t in plan["tensors"]:
        for src, (first, *_) in zip(t["sources"], t["source_rows"]):
            if first >= 0 and src in ckpt.tensors:
                block_rows.setdefault(src, []).append(tuple(t["shape"]))
    for src, shapes in block_rows.items():
        if sum(s[0] for s in shapes) != ckpt.tensors[src][0] or any(s[1:] != ckpt.tensors[src][1:] for s in shapes):
            errors.append(f"row blocks {shapes} do not tile {src} {ckpt.tensors[src]}")
    for t in plan["tensors"]:
        shape = tuple(t["shape"])
        # An optional input (an FP8 scale) absent here: its op passes the
        # weight through.
        present = [s for s, opt in zip(t["sources"], t["optional_sources"]) if not opt or s in ckpt.tensors]
        src = [ckpt.tensors.get(s) for s in present]
        if any(s is None for s in src):
            continue  # reported by the coverage test
        op = _recipe_op(t)
        if op in ("dequant_fp8_block", "dequant_fp8") and len(present) == 1:
            op = None
        where = f"{t['name']} {shape} <- {t['recipe']} {src}"
        if op is None:
            if src[0] != shape:
                errors.append(f"identity shape differs: {where}")
        elif op == "qkv":
            q, k, v = src
            if not (len(q) == len(k) == len(v) == len(shape)):
                errors.append(f"qkv ranks differ: {where}")
            elif not (q[1:] == k[1:] == v[1:] == shape[1:]):
                errors.append(f"qkv trailing dims differ: {where}")
            elif q[0] + k[0] + v[0] != shape[0]:
                errors.append(f"qkv rows do not add up: {where}")
            elif (q[0], k[0], v[0]) != (q_rows, kv_rows, kv_rows):
                errors.append(
                    f"qkv rows are not heads*kv_channels={q_rows} / "
                    f"groups*kv_channels={kv_rows}: {where}"
                )
        elif op == "qkv_gated":
            # Output-gate attention: q_proj holds a gate row for each query row.
            q, k, v = src
            if not (q[1:] == k[1:] == v[1:] == shape[1:]) or (q[0], k[0], v[0]) != (2 * q_rows, kv_rows, kv_rows):
                errors.append(f"qkv_gated rows are not 2*heads*kv_channels / groups*kv_channels: {where}")
            elif q[0] + k[0] + v[0] != shape[0]:
                errors.append(f"qkv_gated rows do not add up: {where}")
        elif op in ("norm_offset", "roll_rows"):
            if src[0] != shape:
                errors.append(f"{op} shape differs: {where}")
        elif op == "gated_mlp":
            g, u = src
            if g != u:
                errors.append(f"gate and up differ: {where}")
            elif g[1:] != shape[1:] or g[0] + u[0] != shape[0]:
                errors.append(f"gated_mlp rows do not add up: {where}")
        elif op == "qkv_concat":
            # HF-fused [q; k; v]: the same rows, regrouped by query group.
            if src[0] != shape or shape[0] != q_rows + 2 * kv_rows:
                errors.append(f"qkv_concat rows are not heads*kv_channels + 2*groups*kv_channels: {where}")
        elif op == "gate_up":
            # HF-fused [gate; up]: the same rows, regrouped per TP rank.
            if src[0] != shape or shape[0] % 2:
                errors.append(f"gate_up rows differ or are odd: {where}")
        elif op == "rows":
            pass  # checked above, all blocks of a tensor together
        elif op in ("expert", "transpose", "gate_up_interleaved", "identity", "@"):
            got = _nested_shape(t["recipe"], ckpt.tensors)
            if got != shape:
                errors.append(f"{op} chain gives {got}: {where}")
        else:
            errors.append(f"no shape rule in this test for recipe op {op!r}: {where}")
    assert not errors, "\n".join(errors)


def test_plan_parameter_count_matches_transformers(bridge_run, tiny_checkpoints, family_id):
    ckpt = tiny_checkpoints(family_id)
    plan = bridge_run.plan(str(ckpt.path))
    total = sum(math.prod(t["shape"]) for t in plan["tensors"])
    assert plan["parameters"] == total
    # transformers counts a tied embedding once, as Megatron does; persistent
    # buffers (DeepSeek's e_score_correction_bias, saved by Sarvam MoE as
    # mlp.gate.expert_bias and by HYV3 as mlp.expert_bias) are stored and
    # converted but are not parameters.
    buffers = sum(math.prod(s) for k, s in ckpt.tensors.items()
                  if k.endswith(("e_score_correction_bias", "mlp.gate.expert_bias", "mlp.expert_bias")))
    assert plan["parameters"] == ckpt.num_parameters + buffers
