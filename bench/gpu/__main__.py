"""GPU checks of the audio encoders on one CUDA device, without vLLM installed (docs/gpu.md, "The GPU check").

    .venv/bin/python -m bench.gpu.pack && .venv/bin/python -m bench.gpu --dry-run   # here, on the CPU: seconds
    python -m bench.gpu                                                             # a lent GPU machine: < 8 min

Prints one `check=NAME mix=M ok=true|false|skipped value=...` line per check and a `summary` line; exits 1 when
a check failed. The dry run is the same code on the CPU with a small encoder and small mixes; checks that need
CUDA report `ok=skipped`.
"""

import argparse
import os
import sys
import time
from pathlib import Path

from . import vendor

MIXES = [(1, 2.0), (10, 2.0), (64, 5.0), (20, 30.0), (1, 600.0), (2, 600.0)]
DRY_MIXES = [(1, 2.0), (3, 2.0), (2, 12.0)]
MEMORY_MIX = (2, 600.0)  # 120 windows: 2 forwards of 60 vs 1 of 120
FFT_LENGTHS = 50
MAX_WINDOWS = 120


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="CPU, small encoder and mixes; CUDA checks skipped")
    parser.add_argument("--vendor", type=Path, default=vendor.VENDOR_TAR, help="the packed vLLM sources (pack.py)")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    if args.dry_run:
        os.environ["VLLM_TARGET_DEVICE"] = "cpu"  # vLLM's CPU platform, whatever the packed metadata says
    vendor.install(args.vendor, simulate=args.dry_run)

    import torch

    from . import checks
    from .build import dasheng, qwen_audio
    from .report import Report

    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device: run with --dry-run on a CPU machine", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.dry_run else "cuda:0")
    mixes = DRY_MIXES if args.dry_run else MIXES
    report = Report()
    import vllm

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device={gpu.replace(' ', '_')} torch={torch.__version__} vllm_from={Path(vllm.__file__).parent}")
    with torch.inference_mode():
        tower = dasheng(args.dry_run, torch.bfloat16, device, MAX_WINDOWS)
        setup = checks.Setup(device, args.dry_run, tower, report)
        for mix in mixes:
            checks.dasheng_step(setup, mix)
            checks.frontend_cuda_vs_cpu(setup, mix)
            checks.bf16_features(setup, mix)
        checks.dasheng_memory(setup, MEMORY_MIX)
        lengths = torch.linspace(1.0, 30.0 if args.dry_run else 600.0, 5 if args.dry_run else FFT_LENGTHS)
        checks.cufft_plans(setup, [round(float(s), 3) for s in lengths])
        del tower, setup.tower
        if device.type == "cuda":
            torch.cuda.empty_cache()
        encoder = qwen_audio(args.dry_run, torch.bfloat16, device)
        for mix in mixes:
            checks.qwen_audio_sync(setup, encoder, mix)
    print(f"elapsed_s={time.perf_counter() - began:.1f}")
    return report.summary()


if __name__ == "__main__":
    sys.exit(main())
