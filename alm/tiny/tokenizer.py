"""A small byte-level BPE in the Qwen2 tokenizer's published form, trained on the spot.

Ordinary tokens first, then the family's special tokens in their published order (as in the real vocabularies,
where they follow the 151,643 BPE tokens), so a tiny checkpoint's tokenizer is a ``Qwen2Tokenizer`` that
transformers and vLLM load exactly like the published one.
"""

from __future__ import annotations

import json

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, Qwen2Tokenizer

_CORPUS = (
    "the a an and of to in is was for on with as by at from this that it be are or not have "
    "sound audio music speech voice dog bark bird song rain wind car engine siren bell piano guitar "
    "drum crowd laugh applause water door knock phone ring alarm baby cry man woman child talk "
    "speaks sings plays loud quiet background noise caption describe what hear clip second minute "
    "hello world yes no please thank you question answer language model assistant transcribe user system"
)


def _bpe(vocab_size: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges of a byte-level BPE trained on a seeded word salad (no special tokens)."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    words = _CORPUS.split()
    generator = torch.Generator().manual_seed(0)
    picks = torch.randint(len(words), (4000,), generator=generator).tolist()
    lines = [" ".join(words[i] for i in picks[k : k + 12]) for k in range(0, len(picks), 12)]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator(lines + words, trainer=trainer)
    model = json.loads(bpe.to_str())["model"]
    pairs = [m.split(" ") if isinstance(m, str) else m for m in model["merges"]]
    return model["vocab"], [(a, b) for a, b in pairs]


def qwen2_tokenizer(
    special_tokens: list[str], *, eos: str, pad: str, chat_template: str, named: dict[str, str] | None = None,
    vocab_size: int = 1024,
) -> Qwen2Tokenizer:  # fmt: skip
    """``special_tokens``: in published id order, ``<|endoftext|>`` first; ``named``: the processor's attribute
    names for some of them (``audio_token`` → ``<|AUDIO|>``), saved as the published ``extra_special_tokens``."""
    vocab, merges = _bpe(vocab_size - len(special_tokens))
    first = len(vocab)
    vocab.update({token: first + i for i, token in enumerate(special_tokens)})
    tokenizer = Qwen2Tokenizer(
        vocab=vocab, merges=merges,  # type: ignore[arg-type]  # tokenizers takes (a, b) pairs
        eos_token=eos, pad_token=pad, extra_special_tokens=named or {}, model_max_length=32768, errors="replace",
    )  # fmt: skip
    tokenizer.add_tokens([AddedToken(token, special=True, normalized=False) for token in special_tokens])
    tokenizer.chat_template = chat_template
    ids = list(token_ids(tokenizer, special_tokens).values())
    if ids != list(range(first, first + len(special_tokens))):
        raise RuntimeError(f"special tokens landed at {ids}, not after the {first} BPE tokens in order")
    return tokenizer


def token_ids(tokenizer: PreTrainedTokenizerBase, tokens: list[str]) -> dict[str, int]:
    """Each token's id; a token the vocabulary lacks is an error, not the unknown token's id."""
    ids: dict[str, int] = {}
    for token in tokens:
        found = tokenizer.convert_tokens_to_ids(token)
        if not isinstance(found, int) or tokenizer.convert_ids_to_tokens(found) != token:
            raise RuntimeError(f"{token!r} is not in the tokenizer's vocabulary")
        ids[token] = found
    return ids
