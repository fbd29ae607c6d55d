"""The Megatron-Core model of an HF checkpoint, Megatron-Bridge's provider shape.

    provider = bridge.to_megatron_provider()
    provider.tensor_model_parallel_size = 2
    provider.finalize()
    model = provider.provide_distributed_model(wrap_with_ddp=False)

The model is built from the mapping's Megatron config by
bridge.megatron_model.build_megatron_model (the builders the test suite's
oracle uses) with Transformer Engine's layer spec when transformer_engine
imports and the local one (plain torch modules) otherwise; set
use_transformer_engine=False to force the local one. A GPTModel, a hybrid's MambaModel, or for a VLM a module with
the GPTModel as ``language_model`` and the HF vision tower beside it.
Parallel state is the job's: initialize torch.distributed first; when
megatron-core's parallel state is not set up yet, finalize() sets it up with
the sizes given here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class ModelProvider:
    bridge: Any
    load_weights: bool = False
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    virtual_pipeline_model_parallel_size: int | None = None
    expert_model_parallel_size: int = 1
    expert_tensor_parallel_size: int | None = None
    params_dtype: torch.dtype | None = None
    #: Megatron config fields set over the mapping's (e.g. a test's CPU
    #: workaround); each must be a field the config has.
    config_overrides: dict | None = None
    #: The layer spec (megatron_model.which_layer_spec): None, Transformer
    #: Engine's when transformer_engine imports and the local one otherwise;
    #: False, the local one; True, Transformer Engine's (an error without it).
    use_transformer_engine: bool | None = None
    _finalized: bool = False

    def finalize(self) -> None:
        from megatron.core import parallel_state as ps

        if not ps.model_parallel_is_initialized():
            ps.initialize_model_parallel(
                tensor_model_parallel_size=self.tensor_model_parallel_size,
                pipeline_model_parallel_size=self.pipeline_model_parallel_size,
                virtual_pipeline_model_parallel_size=self.virtual_pipeline_model_parallel_size,
                expert_model_parallel_size=self.expert_model_parallel_size,
                expert_tensor_parallel_size=self.expert_tensor_parallel_size,
            )
        self._finalized = True

    def provide_distributed_model(self, wrap_with_ddp: bool = False, **_: Any) -> list:
        """The model chunks of this rank (one without virtual pipeline
        stages), on the current CUDA device when there is one."""
        if wrap_with_ddp:
            raise NotImplementedError("wrap the model in DDP yourself; the bridge reads and writes its parameters")
        if not self._finalized:
            self.finalize()
        from megatron.core import parallel_state as ps

        from . import megatron_model

        megatron_model.setup_cpu()  # the CPU workarounds; the parallel state is kept
        meg = self.bridge.megatron_config()
        for key, value in (self.config_overrides or {}).items():
            if key not in meg:
                raise KeyError(f"config_overrides: {key!r} is not a field of the Megatron config")
            meg[key] = value
        if self.params_dtype is not None:
            meg["params_dtype"] = str(self.params_dtype).removeprefix("torch.")
            meg["bf16"] = self.params_dtype == torch.bfloat16
            meg["fp16"] = self.params_dtype == torch.float16
        parallel = dict(
            tensor_model_parallel_size=ps.get_tensor_model_parallel_world_size(),
            pipeline_model_parallel_size=ps.get_pipeline_model_parallel_world_size(),
            expert_model_parallel_size=ps.get_expert_model_parallel_world_size(),
            expert_tensor_parallel_size=ps.get_expert_tensor_parallel_world_size(),
        )
        vpp = ps.get_virtual_pipeline_model_parallel_world_size() or 1
        if vpp > 1:
            parallel["virtual_pipeline_model_parallel_size"] = vpp
        chunks = []
        for v in range(vpp):
            stage = dict(ignore_virtual=False, vp_stage=v) if vpp > 1 else {}
            model = megatron_model.build_megatron_model(
                meg, parallel=parallel, pre_process=ps.is_pipeline_first_stage(**stage),
                post_process=ps.is_pipeline_last_stage(**stage), vp_stage=v if vpp > 1 else None,
                use_transformer_engine=self.use_transformer_engine)
            if torch.cuda.is_available():
                model = model.cuda(torch.cuda.current_device())
            chunks.append(model)
        if self.load_weights:
            self.bridge.load_hf_weights(chunks)
        return chunks
