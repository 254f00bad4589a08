"""What the two Qwen Omni tiny checkpoints share: their published special tokens, chat template and
preprocessor file (Whisper features for audio, the Qwen2-VL image fields beside them in one file)."""

from __future__ import annotations

from pathlib import Path

from transformers import WhisperFeatureExtractor

from alm.tiny.checkpoint import write_json

VISION_FIELDS = {
    "image_processor_type": "Qwen2VLImageProcessor", "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711], "do_convert_rgb": True, "do_normalize": True,
    "do_rescale": True, "do_resize": True, "rescale_factor": 0.00392156862745098, "resample": 3,
    "min_pixels": 3136, "max_pixels": 12845056, "merge_size": 2, "temporal_patch_size": 2,
}  # fmt: skip
"""The image processor's fields as the published preprocessor_config.json has them (``patch_size`` per family)."""


def write_preprocessor(out_dir: Path, *, processor_class: str, chunk_length: int, patch_size: int) -> None:
    """The published single preprocessor_config.json (the processor loads its feature extractor, image and
    video processors from it), written as data: building the image/video processors would import torchvision."""
    features = WhisperFeatureExtractor(
        feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=chunk_length, n_fft=400,
        padding_value=0.0, return_attention_mask=True,
    ).to_dict()  # fmt: skip
    write_json(out_dir / "preprocessor_config.json",
               {**features, **VISION_FIELDS, "patch_size": patch_size, "processor_class": processor_class})  # fmt: skip


def media_template(*, system: str | None, audio: str, image: str, video: str) -> str:
    """A Qwen chat template over string or content-part messages; media parts become their placeholders
    (``audio``: e.g. ``<|audio_bos|><|AUDIO|><|audio_eos|>``); ``system``: the default system turn, if any."""
    first = (
        "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n" + system + "<|im_end|>\n{% endif %}"
        if system else ""
    )  # fmt: skip
    return (
        "{% for message in messages %}" + first +
        "<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for content in message['content'] %}"
        "{% if content['type'] == 'audio' or 'audio' in content or 'audio_url' in content %}" + audio +
        "{% elif content['type'] == 'image' or 'image' in content or 'image_url' in content %}" + image +
        "{% elif content['type'] == 'video' or 'video' in content %}" + video +
        "{% elif 'text' in content %}{{ content['text'] }}"
        "{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
        "{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )  # fmt: skip
