"""Qwen-Audio-Chat for vLLM: Whisper-style audio tower (encoder.py) -> vLLM's own Qwen2 decoder.

The published decoder is QWen-v1 (vLLM 0.32 dropped its text-only QWen), which is Qwen2's computation with MHA,
bias on q/k/v only and plain RoPE up to `seq_length` 2048; weights.py maps its names onto vLLM's Qwen2, so
continuous batching, chunked prefill, torch.compile and CUDA graphs apply unchanged. Each audio item's prompt
span (processing.py) is overwritten with [bos, encoder output, eos] per <= 30 s piece.

The tower (tower.py) runs a step without any host sync, in passes of similar length; it is plain torch, whole on
every rank, so with tensor parallelism each rank encodes a share of the clips (model_plugins/data_parallel.py).
"""

from collections.abc import Iterable
from typing import TYPE_CHECKING, ClassVar, cast

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.logger import init_logger
from vllm.model_executor.models.interfaces import SupportsMultiModal, SupportsPP
from vllm.model_executor.models.utils import init_vllm_registered_model, maybe_prefix
from vllm.multimodal import MULTIMODAL_REGISTRY

from model_plugins.data_parallel import run_sharded, use_data_parallel
from model_plugins.decoder_plumbing import DecoderPlumbing

from .audio_weights import OPTIONAL, published_shapes
from .config import QWenAudioConfig
from .encoder import QwenAudioEncoder
from .processing import (
    QWenAudioDummyInputsBuilder,
    QWenAudioMultiModalProcessor,
    QWenAudioProcessingInfo,
    placeholder,
)
from .spans import clip_tokens
from .tower import embed_clips
from .weights import AUDIO_PREFIX, CheckpointSplit, decoder_weights, published_decoder_names

if TYPE_CHECKING:
    from vllm.model_executor.models.qwen2 import Qwen2ForCausalLM

logger = init_logger(f"vllm.plugins.{__name__}")


@MULTIMODAL_REGISTRY.register_processor(
    QWenAudioMultiModalProcessor,
    info=QWenAudioProcessingInfo,
    dummy_inputs=QWenAudioDummyInputsBuilder,
)
class QWenAudioForConditionalGeneration(DecoderPlumbing, nn.Module, SupportsMultiModal, SupportsPP):
    supports_encoder_tp_data = True  # the tower is replicated: with TP its clips are sharded (data_parallel.py)
    packed_modules_mapping: ClassVar[dict[str, list[str]]] = {
        "qkv_proj": ["q_proj", "k_proj", "v_proj"],
        "gate_up_proj": ["gate_proj", "up_proj"],
    }

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality.startswith("audio"):
            return placeholder(i)
        raise ValueError(f"Qwen-Audio takes audio, not {modality}")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config = cast(QWenAudioConfig, vllm_config.model_config.hf_config)
        if config.audio is None:
            raise ValueError("this checkpoint's config.json has no `audio` section: not a Qwen-Audio model")
        self.config = config
        logger.info(
            "Qwen-Audio: serving with the alm plugin class %s.%s (max audio %.0f s per clip, in 30 s spans)",
            type(self).__module__,
            type(self).__qualname__,
            config.max_audio_seconds,
        )
        # Plain torch layers, whole on every rank: with tensor parallelism each rank encodes a share of the clips.
        self.encoder_data_parallel = use_data_parallel(vllm_config, replicated=True)
        with self._mark_tower_model(vllm_config, "audio"):
            self.audio = QwenAudioEncoder(config.audio, prefix=maybe_prefix(prefix, "audio"))
        with self._mark_language_model(vllm_config):
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

    def embed_audio(self, waveforms: list[torch.Tensor]) -> list[torch.Tensor]:
        """list of (samples,) 16 kHz waveforms -> list of (span tokens of the clip, hidden): every piece's
        [bos, encoder output, eos], pieces in order (tower.py); sharded over tensor-parallel ranks if any."""
        if not (self.encoder_data_parallel and waveforms):
            return self.embed_audio_local(waveforms)
        tokens = [clip_tokens(int(w.shape[-1])) for w in waveforms]  # shapes only: host ints
        hidden = self.audio.proj.out_features
        return run_sharded(waveforms, tokens, tokens, self.embed_audio_local, hidden, self.audio.dtype)

    def embed_audio_local(self, waveforms: list[torch.Tensor]) -> list[torch.Tensor]:
        """embed_audio on this rank alone (every clip here)."""
        return embed_clips(self.audio, waveforms)

    def expected_tensors(self) -> set[str]:
        """Every published tensor name this config needs (decoder table + the audio tower's table, less the fixed
        sinusoids the tower rebuilds when a checkpoint lacks them)."""
        audio = {AUDIO_PREFIX + name for name in published_shapes(self.config.audio) if name not in OPTIONAL}
        return published_decoder_names(self.config.num_hidden_layers) | audio

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Published names; a missing tensor is an error that names it (before the audio tower loads), and so is
        an unexpected one."""
        split = CheckpointSplit(weights)
        loaded = {f"language_model.{n}" for n in self.language_model.load_weights(decoder_weights(split.decoder()))}
        split.raise_if_missing(self.expected_tensors())
        loaded |= {f"audio.{n}" for n in self.audio.load_weights(split.audio)}
        return loaded
