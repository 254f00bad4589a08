"""MiDashengLM for vLLM: Dasheng encoder -> 5x projector -> vLLM's own Qwen2 decoder.

The decoder is vLLM's registered `Qwen2ForCausalLM`, so continuous batching, chunked
prefill, torch.compile and CUDA graphs apply to it unchanged. The audio tower runs
eagerly when vLLM asks for multimodal embeddings: every clip of the step in one batch.
Waveforms reach it as float32 (our processor bypasses vLLM's cast of processor outputs
to the model dtype), so the mel front end keeps full precision when the model runs bf16.
"""

from collections.abc import Iterable

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.logger import init_logger
from vllm.model_executor.models.interfaces import MultiModalEmbeddings, SupportsMultiModal, SupportsPP
from vllm.model_executor.models.utils import AutoWeightsLoader, init_vllm_registered_model, maybe_prefix
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.sequence import IntermediateTensors

from .config import MiDashengLMConfig
from .encoder import DashengEncoder
from .processing import (
    AUDIO_PLACEHOLDER,
    MiDashengLMDummyInputsBuilder,
    MiDashengLMMultiModalProcessor,
    MiDashengLMProcessingInfo,
)
from .projector import SubsampleProjector
from .weights import PUBLISHED_WEIGHTS, TensorRecorder, expected_tensors

# Under the "vllm" logger tree so vLLM's log handlers print it in every process.
logger = init_logger(f"vllm.plugins.{__name__}")


@MULTIMODAL_REGISTRY.register_processor(
    MiDashengLMMultiModalProcessor,
    info=MiDashengLMProcessingInfo,
    dummy_inputs=MiDashengLMDummyInputsBuilder,
)
class MiDashengLM(nn.Module, SupportsMultiModal, SupportsPP):
    hf_to_vllm_mapper = PUBLISHED_WEIGHTS
    # The decoder's fused layers, so quantization configs find their shards.
    packed_modules_mapping = {
        "qkv_proj": ["q_proj", "k_proj", "v_proj"],
        "gate_up_proj": ["gate_proj", "up_proj"],
    }

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality.startswith("audio"):
            return AUDIO_PLACEHOLDER
        raise ValueError(f"MiDashengLM takes audio, not {modality}")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config: MiDashengLMConfig = vllm_config.model_config.hf_config
        quant_config = vllm_config.quant_config
        self.config = config
        logger.info(
            "MiDashengLM: serving with the alm plugin class %s.%s (max audio %.0f s per clip)",
            type(self).__module__,
            type(self).__qualname__,
            config.max_audio_seconds,
        )

        with self._mark_tower_model(vllm_config, "audio"):
            self.encoder = DashengEncoder(
                config.audio_encoder_config, quant_config, prefix=maybe_prefix(prefix, "encoder")
            )
            self.projector = SubsampleProjector(
                config.audio_encoder_config.embed_dim,
                config.text_config.hidden_size,
                config.subsample_factor,
                quant_config,
                prefix=maybe_prefix(prefix, "projector"),
            )

        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config,
                hf_config=config.text_config,
                prefix=maybe_prefix(prefix, "language_model"),
                architectures=["Qwen2ForCausalLM"],
            )

        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    def embed_audio(self, waveforms: list[torch.Tensor]) -> list[torch.Tensor]:
        """list of (samples,) 16 kHz waveforms -> list of (tokens_i, text_hidden)."""
        return self.projector(self.encoder(waveforms))

    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        waveforms = kwargs.get("waveform")
        if waveforms is None:
            return []
        # vLLM stacks equal-length clips into one tensor and lists the others.
        return self.embed_audio(list(waveforms))

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor | IntermediateTensors:
        if intermediate_tensors is not None:
            inputs_embeds = None
        return self.language_model.model(input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.language_model.compute_logits(hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Published names via PUBLISHED_WEIGHTS; any missing or unexpected tensor is an error
        that names it (AutoWeightsLoader raises for unexpected ones)."""
        recorder = TensorRecorder(weights)
        loaded = AutoWeightsLoader(self).load_weights(recorder, mapper=self.hf_to_vllm_mapper)
        recorder.raise_if_missing(expected_tensors(self, self.packed_modules_mapping))
        return loaded
