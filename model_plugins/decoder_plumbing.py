"""What an audio-in, text-out model of ours hands straight to its decoder (``self.language_model``, vLLM's
Qwen2) and how it turns vLLM's "waveform" field into audio embeddings (``self.embed_audio``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import torch
from vllm.model_executor.models.interfaces import MultiModalEmbeddings
from vllm.sequence import IntermediateTensors

if TYPE_CHECKING:
    from vllm.model_executor.models.qwen2 import Qwen2ForCausalLM


class DecoderPlumbing:
    """Mixed into a model (before vLLM's interfaces) that has ``language_model`` and ``embed_audio``."""

    language_model: Qwen2ForCausalLM
    embed_audio: Callable[[list[torch.Tensor]], list[torch.Tensor]]

    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        # The processors' "waveform" field: vLLM stacks equal-length clips into one (clips, samples) tensor and
        # lists the others; kwargs are typed as object.
        waveforms = cast("torch.Tensor | list[torch.Tensor] | None", kwargs.get("waveform"))
        if waveforms is None:
            return []
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
