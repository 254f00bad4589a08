"""How many encoder windows one forward may run: as many as vLLM's start-up profile ran here.

vLLM profiles the encoder once at start-up with `items` dummy clips of the longest accepted
length (`MultiModalBudget`: the encoder budget in tokens // tokens of one such clip, capped by
what the decoder could hold) and sizes the KV cache with the memory that is left. A step may
later schedule many more windows (up to the encoder budget in TOKENS, i.e. hundreds of short
clips, each a window); running them in chunks of the profiled window count keeps every step's
encoder activations within what the profile measured.

With a data-parallel encoder the profile's dummy clips are sharded over the tensor-parallel
ranks like any step's (vLLM's `get_load_balance_assignment`, model_plugins/data_parallel.py), so
a rank profiled only ITS share: that share is its limit (it was the whole profile's, up to
`ranks` times what the rank had measured). A rank whose share was empty (fewer dummy clips than
ranks) still gets one longest clip: vLLM gives every rank the KV cache of the rank with the
least free memory (`get_kv_cache_configs`), so the ranks that did profile a clip leave room.
"""

from vllm.config import VllmConfig
from vllm.model_executor.models.vision import get_load_balance_assignment

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


def profiled_clips(vllm_config: VllmConfig, config: MiDashengLMConfig) -> tuple[int, int]:
    """(dummy clips in vLLM's start-up encoder profile, samples of each: the longest accepted clip)."""
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
    return max(1, min(budget // tokens, max_seqs * per_prompt)), longest


def profiled_encoder_windows(vllm_config: VllmConfig, config: MiDashengLMConfig, ranks: int = 1, rank: int = 0) -> int:
    """Windows this rank ran in vLLM's start-up encoder profile: all of them, or with a data-parallel
    encoder over `ranks` ranks, rank `rank`'s share (at least one clip). `max_encoder_windows` in
    the config overrides."""
    if config.max_encoder_windows is not None:
        return config.max_encoder_windows
    items, longest = profiled_clips(vllm_config, config)
    per_clip = windows_per_clip(longest, config)
    if ranks > 1:
        _, counts, _ = get_load_balance_assignment([per_clip] * items, ranks)
        items = max(1, counts[rank])
    return items * per_clip
