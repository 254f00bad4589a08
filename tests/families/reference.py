"""transformers' own processor and model on a tiny family checkpoint: prompt ids and greedy tokens, the oracle
vLLM's answers are compared with. Runs as a child process (``python -m tests.families.reference``) so the Omni
families get the engine's PYTHONPATH (torchvision) and the test process stays as it was.

    stdin:  {"checkpoint": DIR, "max_new_tokens": N, "cases": [{"messages": [...], "clips": [[float, ...], ...]}]}
    stdout: [{"prompt_ids": [...], "tokens": [...]}, ...]   (one per case)
Messages use transformers' content parts (``{"type": "audio", "audio_url": "clip"}``); clips are 16 kHz mono.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import AutoProcessor

MODEL_CLASSES = {
    "qwen2_audio": ("Qwen2AudioForConditionalGeneration", False),
    "qwen2_5_omni": ("Qwen2_5OmniForConditionalGeneration", True),
    "qwen3_omni_moe": ("Qwen3OmniMoeForConditionalGeneration", True),
}
"""config ``model_type`` → (transformers class, whether text comes from its ``.thinker``)."""


def run(request: dict) -> list[dict]:
    import transformers

    checkpoint = request["checkpoint"]
    model_type = json.loads(Path(checkpoint, "config.json").read_text())["model_type"]
    class_name, thinker = MODEL_CLASSES[model_type]
    model = getattr(transformers, class_name).from_pretrained(checkpoint, dtype=torch.float32).eval()
    generator = model.thinker if thinker else model
    processor = AutoProcessor.from_pretrained(checkpoint)
    results = []
    for case in request["cases"]:
        text = processor.apply_chat_template(case["messages"], add_generation_prompt=True, tokenize=False)
        clips = [np.asarray(clip, dtype=np.float32) for clip in case["clips"]]
        inputs = processor(text=[text], audio=clips or None, sampling_rate=16000, return_tensors="pt")
        with torch.inference_mode():
            out = generator.generate(**inputs, do_sample=False, repetition_penalty=1.0,
                                     max_new_tokens=request["max_new_tokens"])  # fmt: skip
        prompt = inputs["input_ids"][0].tolist()
        results.append({"prompt_ids": prompt, "tokens": out[0, len(prompt) :].tolist()})
    return results


if __name__ == "__main__":
    json.dump(run(json.load(sys.stdin)), sys.stdout)
