"""Hugging Face config classes for the published Qwen-Audio(-Chat) `config.json`, with no remote code.

The published file has `model_type: "qwen"`, `architectures: ["QWenLMHeadModel"]` with an `auto_map` into remote
code, the QWen-v1 decoder's own key names (`kv_channels`, `layer_norm_epsilon`, `rotary_emb_base`, `seq_length`,
`intermediate_size` = twice the width of each MLP branch) and an `audio` section for the Whisper-style tower.
`QWenAudioConfig` reads that file as it is, derives the `Qwen2Config` vLLM's own Qwen2 decoder is built from, and
(only when an `audio` section is present) names our architecture so vLLM builds our model: the checkpoint is not
edited. vLLM 0.32 has no text-only QWen any more, so a `qwen` config without `audio` keeps its architectures and
vLLM refuses it as unsupported.
"""

from typing import ClassVar

from transformers import PretrainedConfig, Qwen2Config

from . import ARCHITECTURE

PUBLISHED_ARCHITECTURE = "QWenLMHeadModel"
DEFAULT_MAX_AUDIO_SECONDS = 600.0


class QWenAudioEncoderConfig(PretrainedConfig):
    """The published `audio` section: Whisper-style encoder, 2x average pooling, projection to `output_dim`."""

    model_type = "qwen_audio_encoder"

    def __init__(
        self,
        n_mels: int = 80,
        n_ctx: int = 1500,
        n_state: int = 1280,
        n_head: int = 20,
        n_layer: int = 32,
        output_dim: int = 4096,
        avg_pool: bool = True,
        add_audio_bos_eos_token: bool = True,
        audio_start_id: int = 155163,
        **kwargs,
    ):
        self.n_mels = n_mels
        self.n_ctx = n_ctx
        self.n_state = n_state
        self.n_head = n_head
        self.n_layer = n_layer
        self.output_dim = output_dim
        self.avg_pool = avg_pool
        self.add_audio_bos_eos_token = add_audio_bos_eos_token
        self.audio_start_id = audio_start_id
        super().__init__(**kwargs)


class QWenAudioConfig(PretrainedConfig):
    model_type = "qwen"
    sub_configs: ClassVar[dict[str, type[PretrainedConfig]]] = {"audio": QWenAudioEncoderConfig}

    def __init__(
        self,
        vocab_size: int = 155947,
        hidden_size: int = 4096,
        num_hidden_layers: int = 32,
        num_attention_heads: int = 32,
        kv_channels: int = 128,
        intermediate_size: int = 22016,
        layer_norm_epsilon: float = 1e-5,
        rotary_emb_base: float = 10000.0,
        rotary_pct: float = 1.0,
        seq_length: int = 2048,
        max_position_embeddings: int = 8192,
        no_bias: bool = True,
        tie_word_embeddings: bool = False,
        audio: dict | QWenAudioEncoderConfig | None = None,
        max_audio_seconds: float = DEFAULT_MAX_AUDIO_SECONDS,
        **kwargs,
    ):
        if rotary_pct != 1.0:
            raise ValueError(f"rotary_pct {rotary_pct}: only full rotary embeddings (1.0) are supported")
        if not no_bias:
            raise ValueError("no_bias false: the MLP and output projection biases of QWen are not supported")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.kv_channels = kv_channels
        self.intermediate_size = intermediate_size
        self.layer_norm_epsilon = layer_norm_epsilon
        self.rotary_emb_base = rotary_emb_base
        self.rotary_pct = rotary_pct
        self.seq_length = seq_length
        self.max_position_embeddings = max_position_embeddings
        self.no_bias = no_bias
        self.max_audio_seconds = float(max_audio_seconds)
        self.audio = None if audio is None else (
            audio if isinstance(audio, QWenAudioEncoderConfig) else QWenAudioEncoderConfig(**audio)
        )  # fmt: skip
        super().__init__(**{"tie_word_embeddings": tie_word_embeddings, **kwargs})  # a field of transformers' own
        if self.audio is not None and self.architectures in (None, [PUBLISHED_ARCHITECTURE]):
            self.architectures = [ARCHITECTURE]
        self.text_config = self._text_config()

    def _text_config(self) -> Qwen2Config:
        """vLLM's Qwen2 decoder with QWen-v1's sizes: MHA (kv heads = heads), bias on q/k/v only, each MLP branch
        `intermediate_size // 2` wide, plain RoPE. Its positions stop at `seq_length` (2048): beyond it the
        published model switches on dynamic NTK and log-n attention, which this decoder does not do."""
        config = Qwen2Config(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size // 2,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_attention_heads,
            hidden_act="silu",
            max_position_embeddings=self.seq_length,
            rms_norm_eps=self.layer_norm_epsilon,
            rope_parameters={"rope_type": "default", "rope_theta": float(self.rotary_emb_base)},
            tie_word_embeddings=self.tie_word_embeddings,
            eos_token_id=getattr(self, "eos_token_id", None),
        )
        config.head_dim = self.kv_channels  # vLLM's Qwen2 reads it (published: 128 = 4096 / 32)
        return config

    def get_text_config(self, *args, **kwargs) -> PretrainedConfig:
        # transformers validates token ids (through this) inside super().__init__, before text_config exists.
        text_config = self.__dict__.get("text_config")
        return text_config if text_config is not None else self
