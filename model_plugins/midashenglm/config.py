"""Hugging Face config classes for the published MiDashengLM checkpoint layout.

`config.json` of mispeech/midashenglm-7b has `model_type: "midashenglm"`, an
`audio_encoder_config` (the Dasheng ViT and its mel front end), `subsample_factor`,
a `text_config` of model_type `qwen2_5_omni_text` and `audio_token_id`.
Registering these classes with vLLM lets that file load without `trust_remote_code`.
"""

from collections.abc import Sequence
from typing import ClassVar

from transformers import PretrainedConfig
from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import (
    Qwen2_5OmniTextConfig,
)

# Longest clip the engine is sized for unless `max_audio_seconds` overrides it
# (hf_overrides / config.json): vLLM's encoder cache is profiled for this length.
DEFAULT_MAX_AUDIO_SECONDS = 600.0


class DashengEncoderConfig(PretrainedConfig):
    """The Dasheng audio transformer and its log-mel front end."""

    model_type = "midashenglm_dasheng_encoder"

    def __init__(
        self,
        embed_dim: int = 1280,
        depth: int = 32,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        init_values: float | None = None,
        patch_size: Sequence[int] | int = (64, 4),  # config.json has a list
        patch_stride: Sequence[int] | int = (64, 4),
        input_channels: int = 1,
        target_length: int = 1008,
        sample_rate: int = 16000,
        n_fft: int = 512,
        win_length: int = 512,
        hop_length: int = 160,
        n_mels: int = 64,
        f_min: float = 0.0,
        f_max: float = 8000.0,
        center: bool = True,
        top_db: float = 120.0,
        **kwargs,
    ):
        self.embed_dim = embed_dim
        self.depth = depth
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.qkv_bias = qkv_bias
        self.init_values = init_values
        self.patch_size = _pair(patch_size)
        self.patch_stride = _pair(patch_stride)
        self.input_channels = input_channels
        self.target_length = target_length
        self.sample_rate = sample_rate
        self.n_fft = n_fft
        self.win_length = win_length
        self.hop_length = hop_length
        self.n_mels = n_mels
        self.f_min = f_min
        self.f_max = f_max
        self.center = center
        self.top_db = top_db
        super().__init__(**kwargs)

    @property
    def frames_per_patch(self) -> int:
        return self.patch_stride[1]

    @property
    def patches_per_window(self) -> int:
        """Time patches in one encoder window (target_length 1008 frames -> 252)."""
        return self.target_length // self.frames_per_patch


class MiDashengLMConfig(PretrainedConfig):
    model_type = "midashenglm"
    sub_configs: ClassVar[dict[str, type[PretrainedConfig]]] = {
        "audio_encoder_config": DashengEncoderConfig,
        "text_config": Qwen2_5OmniTextConfig,
    }

    def __init__(
        self,
        audio_encoder_config: dict | DashengEncoderConfig | None = None,
        subsample_factor: int = 5,
        text_config: dict | Qwen2_5OmniTextConfig | None = None,
        audio_token_id: int | None = None,
        max_audio_seconds: float = DEFAULT_MAX_AUDIO_SECONDS,
        max_encoder_windows: int | None = None,
        **kwargs,
    ):
        if max_encoder_windows is not None and int(max_encoder_windows) < 1:
            raise ValueError(f"max_encoder_windows must be >= 1, got {max_encoder_windows}")
        if not isinstance(audio_encoder_config, DashengEncoderConfig):
            audio_encoder_config = DashengEncoderConfig(**(audio_encoder_config or {}))
        if not isinstance(text_config, Qwen2_5OmniTextConfig):
            text_config = _text_config(text_config or {})
        self.audio_encoder_config = audio_encoder_config
        self.text_config = text_config
        self.subsample_factor = subsample_factor
        self.audio_token_id = audio_token_id
        self.max_audio_seconds = float(max_audio_seconds)
        # Encoder windows per forward (sizing.py); None = what vLLM's start-up profile ran.
        self.max_encoder_windows = None if max_encoder_windows is None else int(max_encoder_windows)
        super().__init__(**kwargs)

    def get_text_config(self, *args, **kwargs) -> Qwen2_5OmniTextConfig:
        return self.text_config


def _text_config(values: dict) -> Qwen2_5OmniTextConfig:
    """The Thinker's text config as a plain Qwen2 decoder.

    The published text_config carries Qwen2.5-Omni's multimodal RoPE sections, but
    MiDashengLM feeds the decoder 1-D positions, which is ordinary RoPE: keep the
    theta, drop the mrope sections so vLLM's Qwen2 builds standard rotary embeddings.
    """
    values = dict(values)
    rope = dict(values.pop("rope_parameters", None) or values.pop("rope_scaling", None) or {})
    theta = values.pop("rope_theta", None) or rope.get("rope_theta") or 1_000_000.0
    config = Qwen2_5OmniTextConfig(**values)
    config.rope_parameters = {"rope_type": "default", "rope_theta": float(theta)}
    return config


def _pair(value: Sequence[int] | int) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    first, second = value
    return (int(first), int(second))
