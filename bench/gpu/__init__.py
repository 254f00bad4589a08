"""GPU checks of the audio encoders, runnable without vLLM (docs/gpu.md): `python -m bench.gpu [--dry-run]`."""
