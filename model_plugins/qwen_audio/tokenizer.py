"""The QWen tokenizer from the checkpoint's `qwen.tiktoken`, with no remote code.

The published tokenizer is tiktoken over `qwen.tiktoken` (base64 token, rank per line) with Qwen's split pattern,
followed by its special tokens in their published order: `<|endoftext|>`, `<|im_start|>`, `<|im_end|>`,
205 `<|extra_N|>`, then Qwen-Audio's tags (task, language, 0.01 s timestamps 0.00–30.00, …, `<audio>`, `</audio>`).
Ids follow from that order: with the published 151,643 ranks `<|endoftext|>` is 151643 and `<audio>` 155163.

We convert the ranks to a `tokenizers` BPE (transformers' own tiktoken converter: merges recovered from the
ranks) so vLLM gets a fast tokenizer with incremental detokenization. The class is named `QWenTokenizer` like the
published `tokenizer_class`: registered with transformers' AutoTokenizer, it is found by that name before the
checkpoint's `auto_map` would ask for remote code.
"""

from pathlib import Path

from tokenizers import AddedToken, normalizers
from transformers import TokenizersBackend
from transformers.convert_slow_tokenizer import TikTokenConverter

VOCAB_FILE = "qwen.tiktoken"
PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
"""Qwen's split pattern (single digits, unlike cl100k's 1–3)."""
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
AUDIO_START, AUDIO_END, AUDIO_PAD = "<audio>", "</audio>", "[[[AUDIO:modality]]]"
_LANGUAGES = ("en", "zh", "de", "es", "ko", "fr", "ja", "it")
_AUDIO_TAGS = (
    AUDIO_PAD,
    "<|startoftranscript|>", "<|startofanalysis|>",
    "<|translate|>", "<|transcribe|>", "<|caption|>", "<|keyword|>",
    "<|unknown|>", *(f"<|{lang}|>" for lang in _LANGUAGES), "<|zh_tr|>",
    "<|notimestamps|>", "<|sil|>", "<|timestamps|>",
    *(f"<|{i * 0.01:.2f}|>" for i in range(3001)),
    "<|caption_audiocaps|>", "<|caption_clotho|>", "<|audioset_ontology|>", "<|caption_plain|>",
    "<|itn|>", "<|wo_itn|>",
    "<|startofentityvalue|>", "<|endofentityvalue|>", "<|startofentitytype|>", "<|endofentitytype|>",
    "<|named_entity_recognition|>", "<|audio_grounding|>", "<|startofword|>", "<|endofword|>", "<|delim|>",
    "<|emotion_recognition|>", "<|music_description|>", "<|note_analysis|>",
    "<|pitch|>", *(f"<|midi_pitch_{i}|>" for i in range(128)),
    "<|velocity|>", *(f"<|midi_velocity_{i}|>" for i in range(128)),
    "<|sonic|>", "<|instrument|>", "<|speaker_meta|>", "<|song_meta|>",
    "<|question|>", "<|answer|>", "<|choice|>", "<|scene|>", "<|event|>", "<|vocal_classification|>",
    "<|speech_understanding|>", "<|scenario|>", "<|action|>", "<|entities|>", "<|speech_edit|>",
    AUDIO_START, AUDIO_END,
)  # fmt: skip
SPECIAL_TOKENS: tuple[str, ...] = (ENDOFTEXT, IM_START, IM_END, *(f"<|extra_{i}|>" for i in range(205)), *_AUDIO_TAGS)
"""Every special token in its published order; the first one's id is the number of ranks in `qwen.tiktoken`."""
PAD_OFFSET = SPECIAL_TOKENS.index(AUDIO_START) - SPECIAL_TOKENS.index(AUDIO_PAD)
"""`<audio>`'s id minus the pad token's (155163 - 151851)."""
SYSTEM_PROMPT = "You are a helpful assistant."
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\n" + SYSTEM_PROMPT + "<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""ChatML as the published `make_context` writes it; the audio placeholder reaches it inside the content."""


class QWenTokenizer(TokenizersBackend):
    """Qwen(-Audio)'s tiktoken vocabulary and special tokens as a fast tokenizer."""

    vocab_files_names = {"vocab_file": VOCAB_FILE}  # noqa: RUF012 — transformers reads this class attribute
    model_input_names = ["input_ids", "attention_mask"]  # noqa: RUF012

    def __init__(self, vocab_file: str | None = None, **kwargs):
        if vocab_file is None or not Path(vocab_file).is_file():
            raise ValueError(f"QWenTokenizer needs the checkpoint's {VOCAB_FILE} (got {vocab_file!r})")
        backend = TikTokenConverter(vocab_file=vocab_file, pattern=PATTERN).converted()
        # The published tokenizer NFC-normalises text before encoding.
        backend.normalizer = normalizers.NFC()
        first = backend.get_vocab_size(with_added_tokens=False)
        backend.add_special_tokens([AddedToken(token, normalized=False, special=True) for token in SPECIAL_TOKENS])
        if backend.token_to_id(AUDIO_END) != first + len(SPECIAL_TOKENS) - 1:
            raise ValueError(f"{vocab_file}: its ranks must be 0..N-1 with no special token among them")
        for key in ("added_tokens_decoder", "auto_map", "tokenizer_class"):
            kwargs.pop(key, None)
        kwargs.setdefault("eos_token", IM_END)
        kwargs.setdefault("pad_token", ENDOFTEXT)
        kwargs.setdefault("chat_template", CHAT_TEMPLATE)
        kwargs.setdefault("clean_up_tokenization_spaces", False)
        super().__init__(tokenizer_object=backend, vocab_file=vocab_file, **kwargs)


def register_with_transformers() -> None:
    """Let AutoConfig read the published config and AutoTokenizer find `QWenTokenizer` by the published
    `tokenizer_class`, with no remote code. Idempotent."""
    from transformers import AutoConfig, AutoTokenizer

    from .config import QWenAudioConfig

    AutoConfig.register(QWenAudioConfig.model_type, QWenAudioConfig, exist_ok=True)
    AutoTokenizer.register(QWenAudioConfig, tokenizer_class=QWenTokenizer, exist_ok=True)
