"""The plugins' real towers outside vLLM's engine, random weights, in the model dtype (as vLLM's loader builds
them: the model dtype as torch's default dtype while the modules are created).

Import only after vendor.install(): the plugin modules import vLLM.
"""

import contextlib
import functools
import socket
from collections.abc import Iterator
from types import SimpleNamespace
from typing import TypeVar

import torch
from torch import nn
from vllm.config import VllmConfig, set_current_vllm_config
from vllm.distributed import init_distributed_environment, initialize_model_parallel
from vllm.distributed.parallel_state import model_parallel_is_initialized

from model_plugins.midashenglm.config import DashengEncoderConfig
from model_plugins.midashenglm.cudagraph import DashengEncoderCudaGraph
from model_plugins.midashenglm.encoder import DashengEncoder
from model_plugins.midashenglm.model import MiDashengLM
from model_plugins.midashenglm.projector import SubsampleProjector
from model_plugins.qwen_audio.config import QWenAudioEncoderConfig
from model_plugins.qwen_audio.encoder import QwenAudioEncoder

M = TypeVar("M", bound=nn.Module)
TEXT_HIDDEN = 3584  # the Qwen2.5-7B decoder width the projector feeds


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    saved = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(saved)


def randomise(module: nn.Module, seed: int) -> None:
    """Seeded weights of a trained model's scale: matrices ~N(0, 0.02), vectors 0, norm weights 1."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.dim() > 1:
                values = torch.randn(param.shape, generator=generator) * 0.02
            elif name.endswith("weight") and ("norm" in name or "ln" in name or "bn" in name):
                values = torch.ones(param.shape)
            else:
                values = torch.randn(param.shape, generator=generator) * 0.02
            param.copy_(values.to(param.dtype))
        for name, buffer in module.named_buffers():
            if name.endswith("running_var"):
                buffer.fill_(1.0)
            elif name.endswith("running_mean"):
                buffer.zero_()


class DashengTower(DashengEncoderCudaGraph, nn.Module):
    """Encoder + projector with MiDashengLM's own step (`embed_audio_local`, `audio_tokens`) and its encoder CUDA
    graph methods, without the 7B decoder MiDashengLM builds beside them."""

    def audio_tokens(self, waveforms: list[torch.Tensor]) -> list[int]:
        return MiDashengLM.audio_tokens(self, waveforms)  # type: ignore[arg-type]  # reads encoder/projector only

    def embed_audio_local(self, waveforms: list[torch.Tensor]) -> list[torch.Tensor]:
        return MiDashengLM.embed_audio_local(self, waveforms)  # type: ignore[arg-type]  # reads encoder/projector only

    def __init__(self, config: DashengEncoderConfig, max_windows: int):
        nn.Module.__init__(self)
        self.config = SimpleNamespace(text_config=SimpleNamespace(hidden_size=TEXT_HIDDEN))  # type: ignore[assignment]  # only the width is read
        self.encoder = DashengEncoder(config, prefix="encoder", max_windows=max_windows, replicated=True)
        self.projector = SubsampleProjector(config.embed_dim, TEXT_HIDDEN, 5, prefix="projector", replicated=True)


@contextlib.contextmanager
def vllm_context(dtype: torch.dtype) -> Iterator[None]:
    """What a vLLM worker has while it builds a model: a current VllmConfig (its CustomOps pick their forward
    from it), tensor-parallel state for one process (its layers read their rank; gloo) and the model dtype as
    torch's default dtype."""
    with set_current_vllm_config(_config()), default_dtype(dtype):
        if not model_parallel_is_initialized():
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            init_distributed_environment(
                world_size=1, rank=0, local_rank=0, distributed_init_method=f"tcp://127.0.0.1:{port}", backend="gloo"
            )
            initialize_model_parallel(1, 1)
        yield


@functools.cache
def _config() -> VllmConfig:
    return VllmConfig()


def after_loading(module: M, dtype: torch.dtype) -> M:
    """vLLM's per-layer step once weights are in place (on CPU its linear layers pick their GEMM here)."""
    with vllm_context(dtype):
        for layer in module.modules():
            method = getattr(layer, "quant_method", None)
            if method is not None:
                method.process_weights_after_loading(layer)
    return module.eval()


def dasheng(small: bool, dtype: torch.dtype, device: torch.device, max_windows: int, seed: int = 0) -> DashengTower:
    config = DashengEncoderConfig(embed_dim=64, depth=2, num_heads=4) if small else DashengEncoderConfig()
    with vllm_context(dtype):
        tower = DashengTower(config, max_windows)
    randomise(tower, seed)
    return after_loading(tower.to(device), dtype)


def qwen_audio(small: bool, dtype: torch.dtype, device: torch.device, seed: int = 0) -> QwenAudioEncoder:
    config = (
        QWenAudioEncoderConfig(n_state=64, n_head=4, n_layer=2, output_dim=32) if small else QWenAudioEncoderConfig()
    )
    with vllm_context(dtype):
        encoder = QwenAudioEncoder(config, prefix="audio")
    randomise(encoder, seed)
    return after_loading(encoder.to(device), dtype)
