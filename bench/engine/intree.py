"""Making vLLM's in-tree MiDashengLM loadable for the comparison, in the bench only.

vLLM 0.32's in-tree model imports torchaudio, which cannot load in our venv (see
shared NOTES). The bench installs PyPI's torchaudio 2.11.0 with --no-deps into a
private directory, deletes its native libraries (only the pure-Python `functional`
ops are used) and puts that directory on PYTHONPATH of the in-tree worker process
alone. It also disables our plugin there (VLLM_PLUGINS=none), which otherwise
replaces the in-tree architecture, and gives a COPY of the checkpoint a remote-code
HF processor (intree_processor.py). Nothing here is a project dependency.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

TORCHAUDIO_VERSION = "2.11.0"
PROCESSOR_MODULE = "processing_midashenglm_bench"


def ensure_torchaudio(cache: Path) -> Path:
    """Idempotent; returns the directory to put on PYTHONPATH."""
    target = cache / f"torchaudio-{TORCHAUDIO_VERSION}"
    package = target / "torchaudio"
    if not (package / "functional" / "__init__.py").exists():
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
             f"torchaudio=={TORCHAUDIO_VERSION}"],
            check=True,
        )  # fmt: skip
    for library in (package / "lib").glob("*.so"):
        library.unlink()  # CUDA builds that fail to load beside torch 2.13+cpu
    return target


def intree_env(cache: Path) -> dict[str, str]:
    """Environment additions for the process that runs the in-tree model."""
    path = str(ensure_torchaudio(cache))
    old = os.environ.get("PYTHONPATH")
    return {
        "PYTHONPATH": path + (os.pathsep + old if old else ""),
        "VLLM_PLUGINS": "none",  # our plugin would replace the in-tree class
    }


def intree_checkpoint(ours: Path, out_dir: Path) -> Path:
    """A copy of `ours` (weights hard-linked) with the processor the in-tree model expects."""
    if (out_dir / "config.json").exists():
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    for item in ours.iterdir():
        if item.name == "config.json" or not item.is_file():
            continue
        dest = out_dir / item.name
        if dest.exists():
            dest.unlink()
        try:
            os.link(item, dest)
        except OSError:
            shutil.copy2(item, dest)
    shutil.copy2(Path(__file__).with_name("intree_processor.py"), out_dir / f"{PROCESSOR_MODULE}.py")
    auto_map = {"AutoProcessor": f"{PROCESSOR_MODULE}.MiDashengLMProcessor"}
    (out_dir / "processor_config.json").write_text(
        json.dumps({"processor_class": "MiDashengLMProcessor", "auto_map": auto_map}, indent=2)
    )
    (out_dir / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "feature_extractor_type": "Wav2Vec2FeatureExtractor",
                "feature_size": 1,
                "sampling_rate": 16000,
                "padding_value": 0.0,
                "padding_side": "right",
                "do_normalize": False,
                "return_attention_mask": False,
                "processor_class": "MiDashengLMProcessor",
                "auto_map": auto_map,
            },
            indent=2,
        )
    )
    # config.json last: its presence marks a complete copy.
    shutil.copy2(ours / "config.json", out_dir / "config.json")
    return out_dir
