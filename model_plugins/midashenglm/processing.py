"""vLLM multimodal processing for MiDashengLM, with no Hugging Face remote code.

vLLM's renderer applies the chat template (each audio part becomes
`<|audio_bos|><|AUDIO|><|audio_eos|>`) and tokenizes; this module turns each clip
into a 16 kHz mono float32 waveform for the encoder and expands its `<|AUDIO|>`
to exactly the number of embeddings the encoder + projector produce for it.
"""

from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import cast

import numpy as np
import numpy.typing as npt
import torch
from transformers import BatchFeature
from vllm.config.multimodal import MultiModalDummyOptions
from vllm.inputs import MultiModalDataDict
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import AudioProcessorItems, MultiModalDataItems, MultiModalDataParser
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptReplacement,
    PromptUpdate,
    PromptUpdateDetails,
)

from model_plugins.clips import checked_samples

from .config import DashengEncoderConfig, MiDashengLMConfig

AUDIO_TOKEN = "<|AUDIO|>"
AUDIO_PLACEHOLDER = "<|audio_bos|><|AUDIO|><|audio_eos|>"


def num_audio_tokens(n_samples: int, encoder: DashengEncoderConfig, subsample_factor: int) -> int:
    """Decoder tokens for a clip: mel frames -> 4-frame patches -> groups of 5.

    With the published front end: ((n + 512 - 512) // 160 + 1) // 4 // 5; 30 s -> 150.
    """
    padded = n_samples + encoder.n_fft if encoder.center else n_samples
    frames = max(0, (padded - encoder.n_fft) // encoder.hop_length + 1)
    return frames // encoder.frames_per_patch // subsample_factor


def min_audio_samples(encoder: DashengEncoderConfig, subsample_factor: int) -> int:
    """Shortest clip that yields one token; shorter clips are zero-padded to it."""
    frames = encoder.frames_per_patch * subsample_factor
    offset = 0 if encoder.center else encoder.n_fft
    return (frames - 1) * encoder.hop_length + offset


class MiDashengLMProcessingInfo(BaseProcessingInfo):
    def get_hf_config(self) -> MiDashengLMConfig:
        return self.ctx.get_hf_config(MiDashengLMConfig)

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"audio": None}

    def get_supported_mm_processor_kwargs(self) -> dict[str, set[str]]:
        return {"audio_kwargs": set()}  # no HF processor: nothing to route

    def get_data_parser(self) -> MultiModalDataParser:
        # vLLM decodes and (only if needed) resamples to 16 kHz mono; soxr, not torchaudio.
        return MultiModalDataParser(
            target_sr=self.get_hf_config().audio_encoder_config.sample_rate,
            target_channels=1,
            audio_resample_method="soxr",
            expected_hidden_size=self._get_expected_hidden_size(),
        )

    def audio_token_id(self) -> int:
        """`audio_token_id` of the published config.json; the tokenizer only if a config lacks it
        (looked up once per processor, not per request)."""
        token_id = self.get_hf_config().audio_token_id
        return int(token_id) if token_id is not None else self._tokenizer_audio_token_id

    @cached_property
    def _tokenizer_audio_token_id(self) -> int:
        return int(self.get_tokenizer().convert_tokens_to_ids(AUDIO_TOKEN))

    def max_audio_samples(self) -> int:
        config = self.get_hf_config()
        return int(config.max_audio_seconds * config.audio_encoder_config.sample_rate)

    def min_audio_samples(self) -> int:
        config = self.get_hf_config()
        return min_audio_samples(config.audio_encoder_config, config.subsample_factor)

    def num_audio_tokens(self, n_samples: int) -> int:
        config = self.get_hf_config()
        n_samples = max(n_samples, self.min_audio_samples())
        return num_audio_tokens(n_samples, config.audio_encoder_config, config.subsample_factor)

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int]:
        # Sizes vLLM's encoder cache and encoder budget for the longest clip we accept,
        # so every clip up to it runs whatever max_num_batched_tokens is.
        return {"audio": self.num_audio_tokens(self.max_audio_samples())}


class MiDashengLMDummyInputsBuilder(BaseDummyInputsBuilder[MiDashengLMProcessingInfo]):
    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return AUDIO_PLACEHOLDER * mm_counts.get("audio", 0)

    def get_dummy_mm_data(
        self, seq_len: int, mm_counts: Mapping[str, int], mm_options: MultiModalDummyOptions
    ) -> MultiModalDataDict:
        return {
            "audio": self._get_dummy_audios(
                length=self.info.max_audio_samples(),
                num_audios=mm_counts.get("audio", 0),
                overrides=mm_options.get("audio"),
            )
        }


class MiDashengLMMultiModalProcessor(BaseMultiModalProcessor[MiDashengLMProcessingInfo]):
    def _call_hf_processor(self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]) -> BatchFeature:
        """Validate each clip and hand its waveform to the model (no HF processor)."""
        # vLLM hands over the parsed audio items (one waveform per clip) under "audio"; the base types values as object.
        clips = cast("Sequence[npt.ArrayLike]", hf_data.get("audio") or [])
        sample_rate = self.info.get_hf_config().audio_encoder_config.sample_rate
        longest, shortest = self.info.max_audio_samples(), self.info.min_audio_samples()
        waveforms = []
        for index, clip in enumerate(clips):
            samples = checked_samples(clip, index, longest, sample_rate)
            if samples.size < shortest:
                samples = np.pad(samples, (0, shortest - samples.size))
            waveforms.append(torch.from_numpy(samples))
        return BatchFeature({"waveform": waveforms}, tensor_type=None)

    def _get_mm_fields_config(
        self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]
    ) -> Mapping[str, MultiModalFieldConfig]:
        return {"waveform": MultiModalFieldConfig.batched("audio")}

    def _get_prompt_updates(
        self,
        mm_items: MultiModalDataItems,
        hf_processor_mm_kwargs: Mapping[str, object],
        out_mm_kwargs: MultiModalKwargsItems,
    ) -> Sequence[PromptUpdate]:
        audio_token_id = self.info.audio_token_id()

        def expand(item_index: int) -> PromptUpdateDetails:
            # The parsed (decoded, 16 kHz mono) clip's length, not the processed tensors: no
            # stacking of waveforms. num_audio_tokens applies the minimum _call_hf_processor pads to.
            clip = mm_items.get_items("audio", AudioProcessorItems).get(item_index)
            n_samples = int(np.asarray(clip).size)
            # Every position is <|AUDIO|>: all of it is embedding (is_embed None), no per-clip mask tensor.
            return PromptUpdateDetails.from_seq([audio_token_id] * self.info.num_audio_tokens(n_samples))

        return [PromptReplacement(modality="audio", target=[audio_token_id], replacement=expand)]
