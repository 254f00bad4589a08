"""vLLM multimodal processing for Qwen-Audio-Chat, with no Hugging Face remote code.

Each OpenAI audio part reaches the chat template as `Audio N:<audio></audio>` (the published `Audio N:<audio>PATH
</audio>` without a path: no file names or URLs ever enter the prompt). This module hands each clip's 16 kHz
mono float32 waveform to the model and expands its `<audio></audio>` to the published span: `<audio>`, n pad
tokens, `</audio>`, all n + 2 of which the model overwrites with [bos, encoder output, eos]. A clip over 30 s
becomes consecutive spans, one per <= 30 s piece (spans.py), so every second is heard. What every audio plugin's
processing shares (clip checks, the waveform field, the data parser) is model_plugins/processing_base.py.
"""

from collections.abc import Mapping, Sequence

from vllm.multimodal.inputs import MultiModalKwargsItems
from vllm.multimodal.parse import MultiModalDataItems
from vllm.multimodal.processing import PromptReplacement, PromptUpdate, PromptUpdateDetails

from model_plugins.processing_base import AudioDummyInputsBuilder, AudioMultiModalProcessor, AudioProcessingInfo

from .config import QWenAudioConfig
from .spans import PIECE_SAMPLES, clip_spans, clip_tokens, span_tokens
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


class QWenAudioProcessingInfo(AudioProcessingInfo):
    def get_hf_config(self) -> QWenAudioConfig:
        return self.ctx.get_hf_config(QWenAudioConfig)

    def token_ids(self) -> tuple[int, int, int]:
        """`<audio>`, `</audio>` and the pad token between them, from the config's `audio_start_id`
        (the published tokenizer puts `</audio>` right after it and the pad token PAD_OFFSET before it)."""
        audio = self.get_hf_config().audio
        if audio is None:
            raise ValueError("this checkpoint's config.json has no `audio` section: not a Qwen-Audio model")
        start = int(audio.audio_start_id)
        return start, start + 1, start - PAD_OFFSET

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int]:
        # Sizes vLLM's encoder cache: the longest clip we accept, or what fits in the context, whichever is less.
        return {"audio": min(clip_tokens(self.max_audio_samples()), seq_len)}


class QWenAudioDummyInputsBuilder(AudioDummyInputsBuilder[QWenAudioProcessingInfo]):
    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return "".join(placeholder(i + 1) for i in range(mm_counts.get("audio", 0)))

    def dummy_clip_samples(self, seq_len: int) -> int:
        # The longest clip whose spans fit the context (2048 tokens: ~81 s), not the engine's longest clip.
        return max(1, min(self.info.max_audio_samples(), longest_clip_within(seq_len)))


class QWenAudioMultiModalProcessor(AudioMultiModalProcessor[QWenAudioProcessingInfo]):
    def _get_prompt_updates(
        self,
        mm_items: MultiModalDataItems,
        hf_processor_mm_kwargs: Mapping[str, object],
        out_mm_kwargs: MultiModalKwargsItems,
    ) -> Sequence[PromptUpdate]:
        start, end, pad = self.info.token_ids()

        def expand(item_index: int) -> PromptUpdateDetails:
            tokens: list[int] = []
            for span in clip_spans(self.clip_samples(mm_items, item_index)):
                tokens += [start, *([pad] * (span - 2)), end]
            return PromptUpdateDetails.from_seq(tokens)  # every position, bos and eos included, is audio

        return [PromptReplacement(modality="audio", target=[start, end], replacement=expand)]


__all__ = ["AUDIO_PAD", "QWenAudioDummyInputsBuilder", "QWenAudioMultiModalProcessor", "QWenAudioProcessingInfo"]
