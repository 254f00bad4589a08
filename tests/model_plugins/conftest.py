"""Builds our MiDashengLM in the test process with vLLM's real weight loader (no engine)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from vllm.config import VllmConfig, set_current_vllm_config
from vllm.distributed import init_distributed_environment, initialize_model_parallel
from vllm.distributed.parallel_state import model_parallel_is_initialized
from vllm.engine.arg_utils import EngineArgs
from vllm.model_executor.model_loader import get_model_loader
from vllm.model_executor.model_loader.utils import process_weights_after_loading
from vllm.plugins import load_general_plugins
from vllm.utils.torch_utils import set_default_torch_dtype

from alm.processes import free_port

SAMPLE_RATE = 16000


def engine_config(checkpoint: Path, dtype: str = "float32", **engine_args: object) -> VllmConfig:
    load_general_plugins()
    # engine_args: EngineArgs fields a test picks (tensor_parallel_size, mm_encoder_tp_mode, ...)
    args = EngineArgs(model=str(checkpoint), dtype=dtype, enforce_eager=True, **engine_args)  # type: ignore[arg-type]
    return args.create_engine_config()


def load_model(
    checkpoint: Path, dtype: str = "float32", *, rank: int = 0, init_method: str | None = None, **engine_args: object
) -> torch.nn.Module:
    """What a vLLM worker does at start-up: build the registered class under the model dtype
    as the default torch dtype (vLLM's loader), load weights. With tensor_parallel_size=N in
    engine_args, this process is rank `rank` of N, rendezvous at `init_method`."""
    config = engine_config(checkpoint, dtype, **engine_args)
    world_size = config.parallel_config.tensor_parallel_size
    with set_current_vllm_config(config):
        if not model_parallel_is_initialized():
            init_distributed_environment(
                world_size=world_size, rank=rank, local_rank=rank,
                distributed_init_method=init_method or f"tcp://127.0.0.1:{free_port()}", backend="gloo",
            )  # fmt: skip
            initialize_model_parallel(world_size, 1)
        loader = get_model_loader(config.load_config)
        with set_default_torch_dtype(config.model_config.dtype):
            model = loader.create_model(vllm_config=config, model_config=config.model_config)
            loader.load_weights(model, config.model_config)
            process_weights_after_loading(model, config.model_config, torch.device("cpu"))
    return model.eval()


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint: Path) -> torch.nn.Module:
    return load_model(tiny_checkpoint)


def tone(seconds: float, freq: float = 440.0, seed: int = 0) -> np.ndarray:
    """A sine with a little seeded noise, float32 at 16 kHz."""
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    noise = np.random.default_rng(seed).standard_normal(t.size) * 0.01
    return (0.3 * np.sin(2 * np.pi * freq * t) + noise).astype(np.float32)
