"""What every audio plugin's vLLM multimodal processing shares, with no Hugging Face processor.

Audio is the only modality, any number of clips per prompt; vLLM's parser decodes each clip and (only if needed)
resamples it to the model's rate, mono, with soxr; each clip is checked (clips.py), zero-padded to the shortest
the model takes and handed to the model as its float32 waveform (one ``waveform`` per audio item); start-up
profiling runs dummy clips of the longest the engine serves. A plugin keeps only what differs: its config
(``get_hf_config``, with ``max_audio_seconds``), its rate and shortest clip, what the chat template writes for a
clip (the dummy text) and the tokens that clip expands to (``_get_prompt_updates``).
"""

from collections.abc import Mapping, Sequence
from typing import TypeVar, cast

import numpy as np
import numpy.typing as npt
import torch
from transformers import BatchFeature
from vllm.config.multimodal import MultiModalDummyOptions
from vllm.inputs import MultiModalDataDict
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.parse import AudioProcessorItems, MultiModalDataItems, MultiModalDataParser
from vllm.multimodal.processing import BaseDummyInputsBuilder, BaseMultiModalProcessor, BaseProcessingInfo

from model_plugins.clips import checked_samples

SAMPLE_RATE = 16_000


class AudioProcessingInfo(BaseProcessingInfo):
    """A plugin's subclass types ``get_hf_config`` (a config with ``max_audio_seconds``) and overrides
    ``sample_rate`` / ``min_audio_samples`` where its model differs."""

    def sample_rate(self) -> int:
        """The rate the model's front end takes (Hz)."""
        return SAMPLE_RATE

    def min_audio_samples(self) -> int:
        """Shortest clip the model takes; a shorter one is zero-padded to it."""
        return 1

    def max_audio_samples(self) -> int:
        """The engine's longest clip (``max_audio_seconds``, hf_overrides / config.json)."""
        return int(self.get_hf_config().max_audio_seconds * self.sample_rate())

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"audio": None}

    def get_supported_mm_processor_kwargs(self) -> dict[str, set[str]]:
        return {"audio_kwargs": set()}  # no HF processor: nothing to route

    def get_data_parser(self) -> MultiModalDataParser:
        # vLLM decodes and (only if needed) resamples to the model's rate, mono; soxr, not torchaudio.
        return MultiModalDataParser(
            target_sr=self.sample_rate(),
            target_channels=1,
            audio_resample_method="soxr",
            expected_hidden_size=self._get_expected_hidden_size(),
        )


_I = TypeVar("_I", bound=AudioProcessingInfo)


class AudioDummyInputsBuilder(BaseDummyInputsBuilder[_I]):
    """Profiling clips as long as ``dummy_clip_samples``; a plugin's subclass gives ``get_dummy_text``."""

    def dummy_clip_samples(self, seq_len: int) -> int:
        """Samples of each dummy clip: the longest the engine serves."""
        return self.info.max_audio_samples()

    def get_dummy_mm_data(
        self, seq_len: int, mm_counts: Mapping[str, int], mm_options: MultiModalDummyOptions
    ) -> MultiModalDataDict:
        return {
            "audio": self._get_dummy_audios(
                length=self.dummy_clip_samples(seq_len),
                num_audios=mm_counts.get("audio", 0),
                overrides=mm_options.get("audio"),
            )
        }


class AudioMultiModalProcessor(BaseMultiModalProcessor[_I]):
    """Each clip's checked waveform to the model; a plugin's subclass gives ``_get_prompt_updates``."""

    def _call_hf_processor(self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]) -> BatchFeature:
        """Validate each clip and hand its waveform to the model (no HF processor)."""
        # vLLM hands over the parsed audio items (one waveform per clip) under "audio"; the base types values as object.
        clips = cast("Sequence[npt.ArrayLike]", hf_data.get("audio") or [])
        sample_rate = self.info.sample_rate()
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

    @staticmethod
    def clip_samples(mm_items: MultiModalDataItems, item_index: int) -> int:
        """Samples of the parsed (decoded, resampled) clip ``item_index``: what its prompt span is sized by (not the
        processed tensors: no stacking of waveforms)."""
        clip = mm_items.get_items("audio", AudioProcessorItems).get(item_index)
        return int(np.asarray(clip).size)
