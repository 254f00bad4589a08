"""A minimal remote-code Hugging Face processor for vLLM's IN-TREE MiDashengLM (bench only).

vLLM's in-tree model asks `AutoProcessor.from_pretrained(..., trust_remote_code=True)`
for a processor with `feature_extractor.sampling_rate`, `audio_token`, `audio_bos_token`
and `audio_eos_token` that returns `input_values` (clips zero-padded to the longest)
and `audio_length` (samples per clip). Our tiny checkpoints ship no processor code, so
`intree.py` copies this file into a COPY of the checkpoint with an `auto_map`. It is as
lean as the published one (pad + stack, no normalisation): the comparison must not be
slowed down by a poor stand-in.
"""

import numpy as np
import torch
from transformers import BatchFeature, ProcessorMixin


class MiDashengLMProcessor(ProcessorMixin):
    feature_extractor_class = "Wav2Vec2FeatureExtractor"
    tokenizer_class = "AutoTokenizer"

    def __init__(
        self,
        feature_extractor=None,
        tokenizer=None,
        audio_token: str = "<|AUDIO|>",
        audio_bos_token: str = "<|audio_bos|>",
        audio_eos_token: str = "<|audio_eos|>",
        chat_template=None,
    ):
        self.audio_token = audio_token
        self.audio_bos_token = audio_bos_token
        self.audio_eos_token = audio_eos_token
        super().__init__(feature_extractor, tokenizer, chat_template=chat_template)

    def __call__(self, text=None, audio=None, **kwargs) -> BatchFeature:
        data = {}
        if text is not None:
            # vLLM only passes dummy text here (it tokenizes the real prompt itself).
            data.update(self.tokenizer(text, add_special_tokens=False))
        if audio is not None:
            clips = [np.asarray(clip, dtype=np.float32).reshape(-1) for clip in audio]
            lengths = [clip.size for clip in clips]
            padded = np.zeros((len(clips), max(lengths)), dtype=np.float32)
            for row, clip in zip(padded, clips, strict=True):
                row[: clip.size] = clip
            data["input_values"] = torch.from_numpy(padded)
            data["audio_length"] = torch.tensor(lengths, dtype=torch.long)
        return BatchFeature(data)
