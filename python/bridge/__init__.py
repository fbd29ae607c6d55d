"""bridge: Hugging Face <-> Megatron-Core, from one declarative file per model family.

The live bridge (docs/live-bridge.md): load HF weights into a running
Megatron-Core model and stream them back out in HF names, over the job's own
process groups, with the same runtime and compiled mappings as `bridge-run`.

    from bridge import AutoBridge
    bridge = AutoBridge.from_hf_pretrained(path)
    provider = bridge.to_megatron_provider(); provider.tensor_model_parallel_size = 2; provider.finalize()
    model = provider.provide_distributed_model(wrap_with_ddp=False)
    bridge.load_hf_weights(model)
    for name, tensor in bridge.export_hf_weights(model): ...
"""

from .auto_bridge import AutoBridge, BridgeError  # noqa: F401

__all__ = ["AutoBridge", "BridgeError"]
