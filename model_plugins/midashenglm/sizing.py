"""How many encoder windows one forward may run: as many as vLLM's start-up profile ran.

vLLM profiles the encoder once at start-up with `items` dummy clips of the longest accepted
length (`MultiModalBudget`: the encoder budget in tokens // tokens of one such clip, capped by
what the decoder could hold) and sizes the KV cache with the memory that is left. A step may
later schedule many more windows (up to the encoder budget in TOKENS, i.e. hundreds of short
clips, each a window); running them in chunks of the profiled window count keeps every step's
encoder activations within what the profile measured.
"""

from vllm.config import VllmConfig

from .config import MiDashengLMConfig
from .processing import num_audio_tokens


def encoder_frames(n_samples: int, config: MiDashengLMConfig) -> int:
    enc = config.audio_encoder_config
    padded = n_samples + enc.n_fft if enc.center else n_samples
    return max(0, (padded - enc.n_fft) // enc.hop_length + 1)


def windows_per_clip(n_samples: int, config: MiDashengLMConfig) -> int:
    enc = config.audio_encoder_config
    patches = encoder_frames(n_samples, config) // enc.frames_per_patch
    return -(-patches // enc.patches_per_window)


def profiled_encoder_windows(vllm_config: VllmConfig, config: MiDashengLMConfig) -> int:
    """Windows in vLLM's start-up encoder profile; `max_encoder_windows` in the config overrides."""
    if config.max_encoder_windows is not None:
        return config.max_encoder_windows
    longest = int(config.max_audio_seconds * config.audio_encoder_config.sample_rate)
    tokens = max(1, num_audio_tokens(longest, config.audio_encoder_config, config.subsample_factor))
    scheduler = vllm_config.scheduler_config
    model_config = vllm_config.model_config
    budget = min(
        max(scheduler.max_num_encoder_input_tokens, tokens),
        max(scheduler.encoder_cache_size, tokens),
    )  # vLLM's compute_mm_encoder_budget
    mm_config = model_config.multimodal_config
    limit = mm_config.get_limit_per_prompt("audio") if mm_config is not None else 1
    per_prompt = max(1, min(limit, model_config.max_model_len // tokens))
    max_seqs = scheduler.max_num_seqs
    if not scheduler.enable_chunked_prefill:
        max_seqs = min(max_seqs, scheduler.max_num_batched_tokens // tokens)
    items = max(1, min(budget // tokens, max_seqs * per_prompt))
    return items * windows_per_clip(longest, config)
