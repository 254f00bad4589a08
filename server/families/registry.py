"""THE model-family registry: one record per family we serve, and every view of it is derived from ``FAMILIES``.

Read by the gateway (server/families/facts.py: each family's audio facts, ``ALM_MODEL_FACTS`` and
``ALM_AUDIO_TOKEN_MODEL`` values), the supervisor (alm/families.py: which family a checkpoint is and what its
engine needs; alm/tiny: ``alm make-tiny --family``) and the token formulas' names (``FORMULAS``).

Adding a family is one ``ModelFamily`` entry below plus its tiny maker (the ``tiny_maker`` function, which writes
a seeded checkpoint in the family's published layout); a family whose processor counts audio tokens differently
also needs its formula in tokens.py. tests/server/families/test_registry.py fails if an entry is missing from a view.

Pure data: imports nothing but tokens.py (no vLLM, torch or alm), so the gateway, ``alm`` and the tests all
read it cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.families.tokens import MIDASHENGLM, QWEN3_OMNI, QWEN_AUDIO, UNCOUNTED, WHISPER, AudioTokenCount, Formula


@dataclass(frozen=True)
class ModelFamily:
    name: str
    """The family's one name: ``alm make-tiny --family``, ``ALM_MODEL_FACTS``' ``family``, ``ALM_AUDIO_TOKEN_MODEL``."""
    architectures: tuple[str, ...]
    """``config.json`` architectures of its published checkpoints (how ``alm`` tells a checkpoint's family)."""
    tiny_maker: str
    """``module:function(out_dir, seed=...)`` writing its seeded random-weight checkpoint (imported only when used)."""
    formula: Formula
    """Prompt tokens of one 16 kHz clip (tokens.py)."""
    audio_placeholder: str
    """What the chat template writes for one audio item (its middle token is expanded to the audio tokens)."""
    transcription_prompt: str
    """Instruction ``/v1/audio/transcriptions`` sends with the clip (``ALM_TRANSCRIPTION_PROMPT`` overrides it)."""
    max_clip_seconds: float | None = None
    """Longest clip one audio item may hold before the processor cuts it (the gateway refuses longer ones); None:
    no cut. A checkpoint's own ``preprocessor_config.json`` overrides it where ``cuts_at_chunk``."""
    cuts_at_chunk: bool = False
    """Its processor cuts a clip at the feature extractor's ``n_samples`` (``chunk_length`` seconds)."""
    config_key: str | None = None
    """A ``config.json`` key its checkpoints have and others of the same architecture lack."""
    needs_torchvision: bool = False
    """Its vLLM model files import torchvision (on the CPU build: the patched copy, alm/families.py)."""
    max_model_len: int | None = None
    """Longest context it is served with by default (positions past it behave unlike the published model)."""

    @property
    def count_audio(self) -> AudioTokenCount:
        return self.formula.count


FAMILIES: tuple[ModelFamily, ...] = (
    ModelFamily(
        "midashenglm",
        ("MiDashengLMModel",),
        tiny_maker="model_plugins.midashenglm.tiny:make_tiny_checkpoint",
        formula=MIDASHENGLM,
        audio_placeholder="<|audio_bos|><|AUDIO|><|audio_eos|>",
        transcription_prompt="Transcribe the audio.",
    ),
    # Whisper feature extractor, chunk_length 30 (vLLM passes truncation=True): a longer clip is cut at 30 s.
    ModelFamily(
        "qwen2-audio",
        ("Qwen2AudioForConditionalGeneration",),
        tiny_maker="alm.tiny.qwen2_audio:make",
        formula=WHISPER,
        audio_placeholder="<|audio_bos|><|AUDIO|><|audio_eos|>",
        transcription_prompt="Detect the language and recognize the speech.",
        max_clip_seconds=30.0,
        cuts_at_chunk=True,
    ),
    # Published preprocessor_config.json chunk_length 300; transformers' processor pads and cuts to it.
    ModelFamily(
        "qwen2.5-omni",
        ("Qwen2_5OmniModel", "Qwen2_5OmniForConditionalGeneration", "Qwen2_5OmniThinkerForConditionalGeneration"),
        tiny_maker="alm.tiny.qwen2_5_omni:make",
        formula=WHISPER,
        audio_placeholder="<|audio_bos|><|AUDIO|><|audio_eos|>",
        transcription_prompt="Transcribe the audio into text.",
        max_clip_seconds=300.0,
        cuts_at_chunk=True,
        needs_torchvision=True,
    ),
    # Its processor does not truncate (truncation False); the model card: up to 40 minutes of audio.
    ModelFamily(
        "qwen3-omni",
        ("Qwen3OmniMoeForConditionalGeneration", "Qwen3OmniMoeThinkerForConditionalGeneration"),
        tiny_maker="alm.tiny.qwen3_omni:make",
        formula=QWEN3_OMNI,
        audio_placeholder="<|audio_start|><|audio_pad|><|audio_end|>",
        transcription_prompt="Transcribe this audio.",  # vLLM's own transcription prompt for Qwen3-Omni
        max_clip_seconds=2400.0,
        needs_torchvision=True,
    ),
    # Our plugin (model_plugins/qwen_audio): a clip over 30 s becomes consecutive <= 30 s spans in the prompt, so
    # nothing is cut (no max_clip_seconds); the context (2048 tokens) bounds a request to ~81 s of audio.
    # QWenLMHeadModel is also text-only Qwen-7B: only a config with an `audio` section is Qwen-Audio. Beyond
    # seq_length 2048 the published model switches on dynamic NTK and log-n attention, which ours does not.
    ModelFamily(
        "qwen-audio-chat",
        ("QWenLMHeadModel",),
        tiny_maker="model_plugins.qwen_audio.tiny:make",
        formula=QWEN_AUDIO,
        audio_placeholder="Audio 1:<audio></audio>",
        transcription_prompt="What does the person say?",  # the published Qwen-Audio-Chat README's example
        config_key="audio",
        max_model_len=2048,
    ),
)
BY_NAME: dict[str, ModelFamily] = {family.name: family for family in FAMILIES}
DEFAULT_FAMILY = "midashenglm"
"""The family of a served model nobody named (``ALM_AUDIO_TOKEN_MODEL``'s default) and ``alm make-tiny``'s."""


def _formulas() -> dict[str, AudioTokenCount]:
    table: dict[str, AudioTokenCount] = {}
    for formula in (*(family.formula for family in FAMILIES), UNCOUNTED):
        if table.setdefault(formula.name, formula.count) is not formula.count:
            raise ValueError(f"two token formulas are called {formula.name!r}")
    return table


FORMULAS = _formulas()
"""Values of a model's ``audio_tokens`` fact: every family's formula, and ``none`` (audio counted as 0 tokens)."""
