"""Qwen-Audio-Chat plugin for vLLM, loaded through the `vllm.general_plugins` entry point (`qwen_audio`).

vLLM calls `register()` in every process it starts, possibly more than once; it only (over)writes registry
entries, so it is idempotent. The published config.json (`model_type: "qwen"`, `architectures:
["QWenLMHeadModel"]` with remote code) loads through our config class, which names our architecture when the
config has an `audio` section; the published `QWenTokenizer` is ours too (tokenizer.py). No remote code runs.
"""

ARCHITECTURE = "QWenAudioForConditionalGeneration"
"""Our architecture name; config.py names it in place of the published `QWenLMHeadModel`."""
MODEL_CLASS = "model_plugins.qwen_audio.model:QWenAudioForConditionalGeneration"


def register() -> None:
    from vllm import ModelRegistry
    from vllm.transformers_utils.config import _CONFIG_REGISTRY

    from .config import QWenAudioConfig
    from .tokenizer import register_with_transformers

    _CONFIG_REGISTRY[QWenAudioConfig.model_type] = QWenAudioConfig
    ModelRegistry.register_model(ARCHITECTURE, MODEL_CLASS)  # a lazy "module:Class": nothing heavy imported here
    register_with_transformers()
