#!/usr/bin/env python3
"""The embedded default model of the main job: a 2-layer Llama-3-style model
(grouped-query attention, tied embeddings, llama3 rope scaling) made by
transformers from examples/tiny-llama/config.json, with random weights
(seed 0), saved as safetensors into the given directory.

  scripts/make_tiny_llama.py OUT_DIR             config and weights
  scripts/make_tiny_llama.py --config-only DIR   rewrite the committed config
"""
import argparse
import pathlib

import torch
import transformers

REPO = pathlib.Path(__file__).resolve().parent.parent


def config():
    c = transformers.LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, vocab_size=256, max_position_embeddings=2048,
        rms_norm_eps=1e-5, tie_word_embeddings=True, hidden_act="silu", rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        torch_dtype="bfloat16")
    c.architectures = ["LlamaForCausalLM"]
    return c


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=pathlib.Path)
    ap.add_argument("--config-only", action="store_true")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.config_only:
        config().save_pretrained(args.out)
        return
    cfg = transformers.AutoConfig.from_pretrained(REPO / "examples" / "tiny-llama")
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.bfloat16)
    model.save_pretrained(args.out)
    print(f"tiny Llama ({model.num_parameters()} parameters, bf16) written to {args.out}")


if __name__ == "__main__":
    main()
