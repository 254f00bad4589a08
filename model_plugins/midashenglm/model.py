"""MiDashengLM for vLLM: Dasheng encoder -> 5x projector -> vLLM's own Qwen2 decoder.

The decoder is vLLM's registered `Qwen2ForCausalLM`, so continuous batching, chunked
prefill, torch.compile and CUDA graphs apply to it unchanged. The audio tower runs
when vLLM asks for multimodal embeddings: every clip of the step through one batched front
end, then windows in bounded chunks (eagerly, or replayed from encoder CUDA graphs on GPUs:
cudagraph.py). Waveforms reach it as float32 (our processor bypasses vLLM's cast of processor
outputs to the model dtype), so the mel front end keeps full precision when the model runs bf16.
"""

from collections.abc import Iterable
from typing import TYPE_CHECKING, ClassVar, cast

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.logger import init_logger
from vllm.model_executor.models.interfaces import SupportsMultiModal, SupportsPP
from vllm.model_executor.models.utils import AutoWeightsLoader, init_vllm_registered_model, maybe_prefix
from vllm.multimodal import MULTIMODAL_REGISTRY

from model_plugins.data_parallel import data_parallel_rank, run_sharded, use_data_parallel
from model_plugins.decoder_plumbing import DecoderPlumbing

from .config import MiDashengLMConfig
from .cudagraph import DashengEncoderCudaGraph
from .encoder import DashengEncoder
from .processing import (
    AUDIO_PLACEHOLDER,
    MiDashengLMDummyInputsBuilder,
    MiDashengLMMultiModalProcessor,
    MiDashengLMProcessingInfo,
)
from .projector import SubsampleProjector
from .sizing import profiled_encoder_windows
from .weights import PUBLISHED_WEIGHTS, TensorRecorder, expected_tensors

if TYPE_CHECKING:
    from vllm.model_executor.models.qwen2 import Qwen2ForCausalLM

# Under the "vllm" logger tree so vLLM's log handlers print it in every process.
logger = init_logger(f"vllm.plugins.{__name__}")


@MULTIMODAL_REGISTRY.register_processor(
    MiDashengLMMultiModalProcessor,
    info=MiDashengLMProcessingInfo,
    dummy_inputs=MiDashengLMDummyInputsBuilder,
)
class MiDashengLM(DecoderPlumbing, nn.Module, SupportsMultiModal, SupportsPP, DashengEncoderCudaGraph):
    hf_to_vllm_mapper = PUBLISHED_WEIGHTS
    supports_encoder_tp_data = True  # --mm-encoder-tp-mode data: model_plugins/data_parallel.py
    # The decoder's fused layers, so quantization configs find their shards.
    packed_modules_mapping: ClassVar[dict[str, list[str]]] = {
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
        # vLLM types hf_config as any PretrainedConfig; ours is the one registered for model_type midashenglm.
        config = cast(MiDashengLMConfig, vllm_config.model_config.hf_config)
        quant_config = vllm_config.quant_config
        self.config = config
        logger.info(
            "MiDashengLM: serving with the alm plugin class %s.%s (max audio %.0f s per clip)",
            type(self).__module__,
            type(self).__qualname__,
            config.max_audio_seconds,
        )

        # --mm-encoder-tp-mode data, or heads that do not divide over the tensor-parallel ranks (as vLLM's ViTs).
        self.encoder_data_parallel = use_data_parallel(vllm_config, config.audio_encoder_config.num_heads)
        # Data parallel: this rank profiled only its share of the dummy clips, so that is its limit.
        ranks, rank = data_parallel_rank() if self.encoder_data_parallel else (1, 0)
        max_windows = profiled_encoder_windows(vllm_config, config, ranks, rank)
        logger.info(
            "MiDashengLM: the audio encoder runs at most %d windows per forward%s",
            max_windows,
            f" on rank {rank} of {ranks} (data-parallel encoder)" if self.encoder_data_parallel else "",
        )
        with self._mark_tower_model(vllm_config, "audio"):
            self.encoder = DashengEncoder(
                config.audio_encoder_config,
                quant_config,
                prefix=maybe_prefix(prefix, "encoder"),
                max_windows=max_windows,
                replicated=self.encoder_data_parallel,
            )
            self.projector = SubsampleProjector(
                config.audio_encoder_config.embed_dim,
                config.text_config.hidden_size,
                config.subsample_factor,
                quant_config,
                prefix=maybe_prefix(prefix, "projector"),
                replicated=self.encoder_data_parallel,
            )

        with self._mark_language_model(vllm_config):
            # Typed as nn.Module by vLLM; `architectures` pins the class it builds.
            self.language_model = cast(
                "Qwen2ForCausalLM",
                init_vllm_registered_model(
                    vllm_config=vllm_config,
                    hf_config=config.text_config,
                    prefix=maybe_prefix(prefix, "language_model"),
                    architectures=["Qwen2ForCausalLM"],
                ),
            )

        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    def audio_tokens(self, waveforms: list[torch.Tensor]) -> list[int]:
        """Decoder tokens per clip, from shapes only (host ints, no device sync)."""
        encoder = self.encoder
        per_patch = encoder.config.frames_per_patch
        return [
            self.projector.num_tokens(encoder.front_end.num_frames(int(w.shape[-1])) // per_patch) for w in waveforms
        ]

    def embed_audio(self, waveforms: list[torch.Tensor]) -> list[torch.Tensor]:
        """list of (samples,) 16 kHz waveforms -> list of (tokens_i, text_hidden)."""
        if not (self.encoder_data_parallel and waveforms):
            return self.embed_audio_local(waveforms)
        return run_sharded(
            waveforms,
            self._windows_per_clip(waveforms),
            self.audio_tokens(waveforms),
            self.embed_audio_local,
            self.config.text_config.hidden_size,
            self.encoder.dtype,
        )

    def embed_audio_local(self, waveforms: list[torch.Tensor]) -> list[torch.Tensor]:
        """embed_audio on this rank alone (every clip here, whatever the encoder TP mode)."""
        tokens = self.audio_tokens(waveforms)
        frames = self.encoder.encode(waveforms, keep=[n * self.projector.factor for n in tokens])
        return list(self.projector(frames).split(tokens))

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Published names via PUBLISHED_WEIGHTS; any missing or unexpected tensor is an error
        that names it (AutoWeightsLoader raises for unexpected ones)."""
        recorder = TensorRecorder(weights)
        loaded = AutoWeightsLoader(self).load_weights(recorder, mapper=self.hf_to_vllm_mapper)
        recorder.raise_if_missing(expected_tensors(self, self.packed_modules_mapping))
        return loaded
