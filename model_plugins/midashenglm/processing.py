"""vLLM multimodal processing for MiDashengLM, with no Hugging Face remote code.

vLLM's renderer applies the chat template (each audio part becomes
`<|audio_bos|><|AUDIO|><|audio_eos|>`) and tokenizes; this module turns each clip
into a 16 kHz mono float32 waveform for the encoder (model_plugins/processing_base.py,
padded to the shortest clip that yields a token) and expands its `<|AUDIO|>` to exactly
the number of embeddings the encoder + projector produce for it.
"""

from collections.abc import Mapping, Sequence
from functools import cached_property

from vllm.multimodal.inputs import MultiModalKwargsItems
from vllm.multimodal.parse import MultiModalDataItems
from vllm.multimodal.processing import PromptReplacement, PromptUpdate, PromptUpdateDetails

from model_plugins.processing_base import AudioDummyInputsBuilder, AudioMultiModalProcessor, AudioProcessingInfo

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


class MiDashengLMProcessingInfo(AudioProcessingInfo):
    def get_hf_config(self) -> MiDashengLMConfig:
        return self.ctx.get_hf_config(MiDashengLMConfig)

    def sample_rate(self) -> int:
        return self.get_hf_config().audio_encoder_config.sample_rate

    def audio_token_id(self) -> int:
        """`audio_token_id` of the published config.json; the tokenizer only if a config lacks it
        (looked up once per processor, not per request)."""
        token_id = self.get_hf_config().audio_token_id
        return int(token_id) if token_id is not None else self._tokenizer_audio_token_id

    @cached_property
    def _tokenizer_audio_token_id(self) -> int:
        return int(self.get_tokenizer().convert_tokens_to_ids(AUDIO_TOKEN))

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


class MiDashengLMDummyInputsBuilder(AudioDummyInputsBuilder[MiDashengLMProcessingInfo]):
    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return AUDIO_PLACEHOLDER * mm_counts.get("audio", 0)


class MiDashengLMMultiModalProcessor(AudioMultiModalProcessor[MiDashengLMProcessingInfo]):
    def _get_prompt_updates(
        self,
        mm_items: MultiModalDataItems,
        hf_processor_mm_kwargs: Mapping[str, object],
        out_mm_kwargs: MultiModalKwargsItems,
    ) -> Sequence[PromptUpdate]:
        audio_token_id = self.info.audio_token_id()

        def expand(item_index: int) -> PromptUpdateDetails:
            # num_audio_tokens applies the minimum _call_hf_processor pads to. Every position is <|AUDIO|>: all of
            # it is embedding (is_embed None), no per-clip mask tensor.
            n_tokens = self.info.num_audio_tokens(self.clip_samples(mm_items, item_index))
            return PromptUpdateDetails.from_seq([audio_token_id] * n_tokens)

        return [PromptReplacement(modality="audio", target=[audio_token_id], replacement=expand)]
