"""The Dasheng encoder under vLLM's encoder CUDA graphs (`SupportsEncoderCudaGraph`, audio modality).

vLLM's EncoderCudaGraphManager captures one graph per "budget" and, at run time, greedily packs
the step's items into the smallest budget that fits, copies them into the captured buffers and
replays; items beyond the largest budget run eagerly. Dasheng cuts audio into fixed 1008-frame
windows, so our budgets count WINDOWS (the item specs report each clip's windows as its budget
size and its decoder tokens as its output size). A graph for B windows runs:

  windows (B, 1, n_mels, 1008)   normalised features of the batch's windows, clip after clip;
                                 padding windows are zeros
  valid_patches (B,)             real patches per window -> the attention key mask, built inside
                                 the graph; padding windows count as full, so they stay finite
  rows (B * 252 // 5 * 5,)       which encoder rows feed the projector, token after token

and returns (B * 252 // 5, text_hidden): the batch's audio tokens first, junk after. The mel
front end runs before the graph (one batched STFT per packed batch). Graphs are enabled by
vLLM's own settings (`-cc.cudagraph_mm_encoder=true`, budgets via
`-cc.encoder_cudagraph_token_budgets=[...]` in windows); vLLM's CPU runner never captures, so on
CPU this is inert. GPU capture and its speed are unverified here (no GPU on this project's
machines); the CPU tests drive vLLM's manager with the graph replaced by a re-run of the forward.
"""

import math
from typing import TYPE_CHECKING, Any

import torch
from vllm.config import VllmConfig
from vllm.model_executor.models.interfaces import SupportsEncoderCudaGraph
from vllm.v1.worker.encoder_cudagraph_defs import (
    EncoderCudaGraphCaptureInputs,
    EncoderCudaGraphConfig,
    EncoderCudaGraphReplayBuffers,
    EncoderItemSpec,
)

from model_plugins.host import to_device

from .encoder import gather_rows

if TYPE_CHECKING:
    from .config import MiDashengLMConfig
    from .encoder import DashengEncoder
    from .projector import SubsampleProjector


def _waveforms(mm_kwargs: dict[str, Any]) -> list[torch.Tensor]:
    # vLLM stacks equal-length clips into one tensor and lists the others.
    return list(mm_kwargs.get("waveform", []))


class DashengEncoderCudaGraph(SupportsEncoderCudaGraph):
    """Mixin for MiDashengLM: the SupportsEncoderCudaGraph methods, in windows."""

    config: "MiDashengLMConfig"
    encoder: "DashengEncoder"
    projector: "SubsampleProjector"

    def embed_audio_local(self, waveforms: list[torch.Tensor]) -> list[torch.Tensor]:
        raise NotImplementedError  # provided by the model

    def audio_tokens(self, waveforms: list[torch.Tensor]) -> list[int]:
        raise NotImplementedError  # provided by the model

    def _windows_per_clip(self, waveforms: list[torch.Tensor]) -> list[int]:
        enc = self.encoder.config
        per_window = enc.patches_per_window
        patches = [self.encoder.front_end.num_frames(int(w.shape[-1])) // enc.frames_per_patch for w in waveforms]
        return [-(-p // per_window) for p in patches]

    def _tokens_for_windows(self, windows: int) -> int:
        """Output rows of a graph of `windows` windows: the most tokens such a batch can hold."""
        return windows * self.encoder.config.patches_per_window // self.projector.factor

    def get_encoder_cudagraph_config(self) -> EncoderCudaGraphConfig:
        per_window = self.encoder.config.patches_per_window

        def pad_as_full(dst: torch.Tensor, src: torch.Tensor) -> None:
            dst.fill_(per_window)
            dst[: src.shape[0]].copy_(src)

        return EncoderCudaGraphConfig(
            modalities=["audio"],
            buffer_keys=["windows", "valid_patches", "rows"],
            out_hidden_size=self.config.text_config.hidden_size,
            padding_logics={"valid_patches": pad_as_full},
        )

    def get_input_modality(self, mm_kwargs: dict[str, Any]) -> str:
        return "audio"

    def get_max_frames_per_video(self) -> int:
        return 1  # no video

    def get_encoder_cudagraph_budget_range(self, vllm_config: VllmConfig) -> tuple[int, int]:
        """(min, max) windows per graph. Max: the windows one eager forward may run (what vLLM's
        start-up profile measured). Min ~ sqrt(max): vLLM caps clips per replay at
        min(max // min, min), so this balances padding of small batches against clips per replay."""
        most = self.encoder.max_windows
        return max(1, math.isqrt(most - 1) + 1 if most > 1 else 1), most

    def get_encoder_cudagraph_item_specs(self, mm_kwargs: dict[str, Any]) -> list[EncoderItemSpec]:
        waveforms = _waveforms(mm_kwargs)
        return [
            EncoderItemSpec(input_size=windows, output_tokens=tokens, path_output_tokens={"default": windows})
            for windows, tokens in zip(self._windows_per_clip(waveforms), self.audio_tokens(waveforms), strict=True)
        ]

    def select_encoder_cudagraph_items(self, mm_kwargs: dict[str, Any], indices: list[int]) -> dict[str, Any]:
        waveforms = _waveforms(mm_kwargs)
        return {"waveform": [waveforms[i] for i in indices]}

    def prepare_encoder_cudagraph_capture_inputs(
        self,
        token_budget: int,
        max_batch_size: int,
        max_frames_per_batch: int,
        device: torch.device,
        dtype: torch.dtype,
        path: str = "default",
        axis_keys: tuple[Any, ...] | None = None,
    ) -> EncoderCudaGraphCaptureInputs:
        enc = self.encoder.config
        rows = self._tokens_for_windows(token_budget) * self.projector.factor
        return EncoderCudaGraphCaptureInputs(
            values={
                "windows": torch.zeros(token_budget, 1, enc.n_mels, enc.target_length, device=device, dtype=dtype),
                "valid_patches": torch.full((token_budget,), enc.patches_per_window, device=device),
                "rows": torch.zeros(rows, dtype=torch.long, device=device),
            }
        )

    def prepare_encoder_cudagraph_replay_buffers(
        self,
        mm_kwargs: dict[str, Any],
        max_batch_size: int,
        max_frames_per_batch: int,
        path: str = "default",
    ) -> EncoderCudaGraphReplayBuffers:
        """The batch's windows clip after clip at full width, their real patches, and the rows
        of the flattened (windows x 252) encoder output that feed each token."""
        waveforms = _waveforms(mm_kwargs)
        encoder, enc = self.encoder, self.encoder.config
        per_window, per_patch = enc.patches_per_window, enc.frames_per_patch
        features, packed = encoder.features(waveforms)
        patches = encoder.patches_per_clip(packed)
        keep = [n * self.projector.factor for n in self.audio_tokens(waveforms)]
        starts: list[int] = []
        valid: list[int] = []
        bases: list[int] = []
        kept: list[int] = []
        before: list[int] = []
        total = 0
        for clip, count in enumerate(patches):
            for index, first in enumerate(range(0, count, per_window)):
                starts.append(packed.frame_offsets[clip] + index * enc.target_length)
                valid.append(min(per_window, count - first))
                bases.append(len(bases) * per_window)
                kept.append(min(valid[-1], max(0, keep[clip] - first)))
                before.append(total)
                total += kept[-1]
        meta = to_device([starts, valid, bases, kept, before], features.device)
        windows = encoder.gather_windows(features, meta[0], meta[1] * per_patch, enc.target_length)
        return EncoderCudaGraphReplayBuffers(
            values={"windows": windows, "valid_patches": meta[1], "rows": gather_rows(meta[2], meta[3], meta[4], total)}
        )

    def encoder_cudagraph_forward(self, inputs: dict[str, torch.Tensor], path: str = "default") -> torch.Tensor:
        windows, valid = inputs["windows"], inputs["valid_patches"]
        key_mask = torch.arange(windows.shape[-1] // self.encoder.config.frames_per_patch, device=windows.device)
        features = self.encoder.forward_windows(windows, key_mask[None, :] < valid[:, None])
        return self.projector(features.flatten(0, 1).index_select(0, inputs["rows"]))

    def encoder_eager_forward(self, mm_kwargs: dict[str, Any], path: str = "default") -> torch.Tensor:
        # Local: with a data-parallel encoder vLLM's manager has already sharded the clips.
        return torch.cat(self.embed_audio_local(_waveforms(mm_kwargs)))
