"""The HF-style eager baseline: a plain-torch audio tower + transformers' Qwen2ForCausalLM.generate.

This is how MiDashengLM's own efficiency table is measured (HF generate with
inputs_embeds). Weights are read from the same safetensors file the engines load.
The audio tower is a batched re-statement of tests/model_plugins/reference.py
(equal-length clips in one forward, window by window, no masks needed); `check()`
compares it with that reference.
"""

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

AUDIO_TOKEN = "<|AUDIO|>"


class AudioTower:
    """Equal-length clips (batch, samples) -> (batch, tokens, text_hidden)."""

    def __init__(self, tensors: dict[str, torch.Tensor], config: dict):
        self.t = {k[len("audio_") :]: v for k, v in tensors.items() if k.startswith("audio_")}
        self.enc, self.k = config["audio_encoder_config"], config["subsample_factor"]
        e = self.enc
        n_freqs = e["n_fft"] // 2 + 1
        mel = lambda hz: 2595.0 * math.log10(1.0 + hz / 700.0)  # noqa: E731
        points = torch.linspace(mel(e["f_min"]), mel(e["f_max"]), e["n_mels"] + 2, dtype=torch.float64)
        hz = 700.0 * (10.0 ** (points / 2595.0) - 1.0)
        bins = torch.linspace(0, e["sample_rate"] / 2, n_freqs, dtype=torch.float64)[:, None]
        rising = (bins - hz[None, :-2]) / (hz[1:-1] - hz[:-2])
        falling = (hz[None, 2:] - bins) / (hz[2:] - hz[1:-1])
        self.filters = torch.clamp(torch.minimum(rising, falling), min=0).float()  # (n_freqs, n_mels)
        self.window = torch.hann_window(e["win_length"])
        bn = "encoder.init_bn"
        scale = self.t[f"{bn}.weight"] / torch.sqrt(self.t[f"{bn}.running_var"] + 1e-5)
        self.bn_scale, self.bn_shift = scale, self.t[f"{bn}.bias"] - self.t[f"{bn}.running_mean"] * scale

    def log_mel(self, wave: torch.Tensor) -> torch.Tensor:
        e = self.enc
        spec = torch.stft(wave, e["n_fft"], e["hop_length"], e["win_length"], self.window,
                          center=True, pad_mode="reflect", return_complex=True)  # fmt: skip
        mel = (spec.abs().square().transpose(1, 2) @ self.filters).transpose(1, 2)  # (B, mels, frames)
        db = 10.0 * torch.log10(torch.clamp(mel, min=1e-10))
        return torch.maximum(db, db.amax(dim=(1, 2), keepdim=True) - 120.0)

    def block(self, x: torch.Tensor, name: str) -> torch.Tensor:
        t, heads = self.t, self.enc["num_heads"]
        b, n, d = x.shape
        h = F.layer_norm(x, (d,), t[f"{name}.norm1.weight"], t[f"{name}.norm1.bias"], eps=1e-6)
        qkv = F.linear(h, t[f"{name}.attn.qkv.weight"], t[f"{name}.attn.qkv.bias"])
        q, k, v = qkv.view(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        x = x + t[f"{name}.ls1.gamma"] * F.linear(a, t[f"{name}.attn.proj.weight"], t[f"{name}.attn.proj.bias"])
        h = F.layer_norm(x, (d,), t[f"{name}.norm2.weight"], t[f"{name}.norm2.bias"], eps=1e-6)
        h = F.gelu(F.linear(h, t[f"{name}.mlp.fc1.weight"], t[f"{name}.mlp.fc1.bias"]))
        return x + t[f"{name}.ls2.gamma"] * F.linear(h, t[f"{name}.mlp.fc2.weight"], t[f"{name}.mlp.fc2.bias"])

    def __call__(self, waves: torch.Tensor) -> torch.Tensor:
        t, e = self.t, self.enc
        mel = self.log_mel(waves) * self.bn_scale[:, None] + self.bn_shift[:, None]
        x = F.conv2d(
            mel[:, None],
            t["encoder.patch_embed.proj.weight"],
            t["encoder.patch_embed.proj.bias"],
            stride=tuple(e["patch_stride"]),
        )  # fmt: skip  (B, dim, 1, patches)
        outputs = []
        for window in x.split(e["target_length"] // e["patch_stride"][1], dim=-1):
            h = window + t["encoder.time_pos_embed"][..., : window.shape[-1]] + t["encoder.freq_pos_embed"]
            h = h.flatten(2).transpose(1, 2)
            for i in range(e["depth"]):
                h = self.block(h, f"encoder.blocks.{i}")
            outputs.append(F.layer_norm(h, h.shape[-1:], t["encoder.norm.weight"], t["encoder.norm.bias"], eps=1e-6))
        frames = torch.cat(outputs, dim=1)
        n = frames.shape[1] // self.k
        grouped = frames[:, : n * self.k].reshape(frames.shape[0], n, -1)
        hidden = F.gelu(F.linear(grouped, t["projector.net.0.weight"], t["projector.net.0.bias"]))
        return F.linear(hidden, t["projector.net.2.weight"], t["projector.net.2.bias"])


class HFBaseline:
    def __init__(self, checkpoint: Path):
        checkpoint = Path(checkpoint)
        config = json.loads((checkpoint / "config.json").read_text())
        tensors = load_file(checkpoint / "model.safetensors")
        self.config, self.tensors = config, tensors
        self.audio = AudioTower(tensors, config)
        text = config["text_config"]
        qwen = Qwen2Config(
            vocab_size=text["vocab_size"], hidden_size=text["hidden_size"],
            intermediate_size=text["intermediate_size"], num_hidden_layers=text["num_hidden_layers"],
            num_attention_heads=text["num_attention_heads"], num_key_value_heads=text["num_key_value_heads"],
            head_dim=text.get("head_dim"), rms_norm_eps=text["rms_norm_eps"],
            max_position_embeddings=text["max_position_embeddings"], tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": text.get("rope_theta", 1e6)},
        )  # fmt: skip
        self.decoder = Qwen2ForCausalLM(qwen).eval()
        decoder = {k[len("decoder.") :]: v for k, v in tensors.items() if k.startswith("decoder.")}
        missing, unexpected = self.decoder.load_state_dict(decoder, strict=False)
        missing = [m for m in missing if "rotary" not in m]
        if missing or unexpected:
            raise ValueError(f"decoder weights do not match: missing {missing}, unexpected {unexpected}")
        self.tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        self.audio_id = self.tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)
        self.pad_id = self.tokenizer.pad_token_id

    def prompt_embeds(self, text: str, audio: torch.Tensor) -> torch.Tensor:
        """One prompt: its <|AUDIO|> expanded to the clip's embeddings -> (tokens, hidden)."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        at = ids.index(self.audio_id)
        ids = ids[:at] + [self.audio_id] * audio.shape[0] + ids[at + 1 :]
        embeds = self.decoder.model.embed_tokens(torch.tensor(ids))
        embeds[at : at + audio.shape[0]] = audio
        return embeds

    def generate(self, texts: list[str], waves: list, max_tokens: int) -> list[list[int]]:
        """A static batch: one audio-tower forward, left-padded prompts, one generate()."""
        audio = self.audio(torch.stack([torch.as_tensor(w) for w in waves]))
        embeds = [self.prompt_embeds(text, a) for text, a in zip(texts, audio, strict=True)]
        longest = max(e.shape[0] for e in embeds)
        batch = torch.zeros(len(embeds), longest, embeds[0].shape[1])
        mask = torch.zeros(len(embeds), longest, dtype=torch.long)
        for row, e in enumerate(embeds):
            batch[row, longest - e.shape[0] :], mask[row, longest - e.shape[0] :] = e, 1
        generation = GenerationConfig(
            do_sample=False, max_new_tokens=max_tokens, eos_token_id=None, pad_token_id=self.pad_id
        )  # ignore_eos: every sample produces max_tokens
        out = self.decoder.generate(inputs_embeds=batch, attention_mask=mask, generation_config=generation)
        return out[:, -max_tokens:].tolist()

    def check(self, wave) -> float:
        """Max abs difference of this batched tower vs the reference re-computation (one clip)."""
        from tests.model_plugins.reference import reference_audio_embeddings

        reference = reference_audio_embeddings(wave, self.tensors, self.config)
        return float((self.audio(torch.as_tensor(wave)[None])[0] - reference).abs().max())
