"""The GPU check (bench/gpu, docs/gpu.md) in its CPU dry run, as a lent GPU machine would import it: vLLM from the
packed sources, the serving venv's vLLM and the packages such a machine lacks hidden."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_dry_run_packs_imports_and_runs_every_check(tmp_path):
    tar = tmp_path / "vendor.tar.gz"
    subprocess.run([sys.executable, "-m", "bench.gpu.pack", "--out", str(tar)], cwd=ROOT, check=True, timeout=120)
    run = subprocess.run(
        [sys.executable, "-m", "bench.gpu", "--dry-run", "--vendor", str(tar)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in run.stdout.splitlines() if line.startswith("check=")]
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    checks = {line.split()[0].removeprefix("check=") for line in lines}
    assert checks == {
        "dasheng_sync",
        "dasheng_graph_inputs_sync",
        "dasheng_graph_equals_eager",
        "dasheng_time",
        "frontend_device_vs_cpu_db",
        "bf16_features",
        "dasheng_peak_memory",
        "cufft_plan_cache",
        "qwen_audio_sync",
    }
    assert all(" ok=true " in line or " ok=skipped " in line for line in lines), lines
    assert "/alm-vendor-" in run.stdout.split("vllm_from=")[1].split()[0]
    assert run.stdout.splitlines()[-1].startswith("summary passed=")
