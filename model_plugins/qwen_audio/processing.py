"""vLLM multimodal processing for Qwen-Audio-Chat, with no Hugging Face remote code.

Each OpenAI audio part reaches the chat template as `Audio N:<audio></audio>` (the published `Audio N:<audio>PATH
</audio>` without a path: no file names or URLs ever enter the prompt). This module hands each clip's 16 kHz
mono float32 waveform to the model and expands its `<audio></audio>` to the published span: `<audio>`, n pad
tokens, `</audio>`, all n + 2 of which the model overwrites with [bos, encoder output, eos]. A clip over 30 s
becomes consecutive spans, one per <= 30 s piece (spans.py), so every second is heard.
"""

from collections.abc import Mapping, Sequence
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

from .config import QWenAudioConfig
from .spans import PIECE_SAMPLES, SAMPLE_RATE, clip_spans, clip_tokens, span_tokens
from .tokenizer import AUDIO_END, AUDIO_PAD, AUDIO_START, PAD_OFFSET


def placeholder(index: int) -> str:
    """What the chat template gets for the `index`-th (from 1) audio item of a conversation."""
    return f"Audio {index}:{AUDIO_START}{AUDIO_END}"


def longest_clip_within(tokens: int) -> int:
    """Samples of the longest clip whose spans fit in `tokens` prompt tokens (0 if not even a short one does)."""
    whole = tokens // span_tokens(PIECE_SAMPLES)
    rest = tokens - whole * span_tokens(PIECE_SAMPLES)
    low, high = 0, PIECE_SAMPLES - 1  # the longest partial piece with span_tokens <= rest
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if span_tokens(mid) <= rest else (low, mid - 1)
    return whole * PIECE_SAMPLES + (low if span_tokens(low) <= rest else 0)


class QWenAudioProcessingInfo(BaseProcessingInfo):
    def get_hf_config(self) -> QWenAudioConfig:
        return self.ctx.get_hf_config(QWenAudioConfig)

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"audio": None}

    def get_supported_mm_processor_kwargs(self) -> dict[str, set[str]]:
        return {"audio_kwargs": set()}  # no HF processor: nothing to route

    def get_data_parser(self) -> MultiModalDataParser:
        # vLLM decodes and (only if needed) resamples to 16 kHz mono; soxr, not torchaudio.
        return MultiModalDataParser(
            target_sr=SAMPLE_RATE,
            target_channels=1,
            audio_resample_method="soxr",
            expected_hidden_size=self._get_expected_hidden_size(),
        )

    def token_ids(self) -> tuple[int, int, int]:
        """`<audio>`, `</audio>` and the pad token between them, from the config's `audio_start_id`
        (the published tokenizer puts `</audio>` right after it and the pad token PAD_OFFSET before it)."""
        audio = self.get_hf_config().audio
        if audio is None:
            raise ValueError("this checkpoint's config.json has no `audio` section: not a Qwen-Audio model")
        start = int(audio.audio_start_id)
        return start, start + 1, start - PAD_OFFSET

    def max_audio_samples(self) -> int:
        return int(self.get_hf_config().max_audio_seconds * SAMPLE_RATE)

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int]:
        # Sizes vLLM's encoder cache: the longest clip we accept, or what fits in the context, whichever is less.
        return {"audio": min(clip_tokens(self.max_audio_samples()), seq_len)}


class QWenAudioDummyInputsBuilder(BaseDummyInputsBuilder[QWenAudioProcessingInfo]):
    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return "".join(placeholder(i + 1) for i in range(mm_counts.get("audio", 0)))

    def get_dummy_mm_data(
        self, seq_len: int, mm_counts: Mapping[str, int], mm_options: MultiModalDummyOptions
    ) -> MultiModalDataDict:
        length = max(1, min(self.info.max_audio_samples(), longest_clip_within(seq_len)))
        return {
            "audio": self._get_dummy_audios(
                length=length, num_audios=mm_counts.get("audio", 0), overrides=mm_options.get("audio")
            )
        }


class QWenAudioMultiModalProcessor(BaseMultiModalProcessor[QWenAudioProcessingInfo]):
    def _call_hf_processor(self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]) -> BatchFeature:
        """Validate each clip and hand its waveform to the model (no HF processor)."""
        clips = cast("Sequence[npt.ArrayLike]", hf_data.get("audio") or [])
        longest = self.info.max_audio_samples()
        waveforms = []
        for index, clip in enumerate(clips):
            waveforms.append(torch.from_numpy(checked_samples(clip, index, longest, SAMPLE_RATE)))
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
        start, end, pad = self.info.token_ids()

        def expand(item_index: int) -> PromptUpdateDetails:
            clip = mm_items.get_items("audio", AudioProcessorItems).get(item_index)
            tokens: list[int] = []
            for span in clip_spans(int(np.asarray(clip).size)):
                tokens += [start, *([pad] * (span - 2)), end]
            return PromptUpdateDetails.from_seq(tokens)  # every position, bos and eos included, is audio

        return [PromptReplacement(modality="audio", target=[start, end], replacement=expand)]


__all__ = ["AUDIO_PAD", "QWenAudioDummyInputsBuilder", "QWenAudioMultiModalProcessor", "QWenAudioProcessingInfo"]
