#!/usr/bin/env python3
"""Writes examples/tiny-llama/config.json: the embedded default model of the
main job, a 2-layer Llama-3-style config made by transformers' LlamaConfig
(grouped-query attention, tied embeddings, llama3 rope scaling)."""
import json
import pathlib
import sys

from transformers import LlamaConfig

out = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "examples/tiny-llama")
out.mkdir(parents=True, exist_ok=True)
config = LlamaConfig(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, vocab_size=256, max_position_embeddings=2048,
    rms_norm_eps=1e-5, tie_word_embeddings=True, hidden_act="silu",
    rope_theta=500000.0,
    rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    torch_dtype="bfloat16")
config.architectures = ["LlamaForCausalLM"]
config.save_pretrained(out)
print(f"wrote {out / 'config.json'}")
