"""The Dasheng encoder under vLLM's encoder CUDA graphs (`SupportsEncoderCudaGraph`, audio modality).

vLLM's EncoderCudaGraphManager captures graphs per "budget" and, at run time, greedily packs the
step's items into the smallest budget that fits, copies them into the captured buffers and
replays; items beyond the largest budget run eagerly. Our budgets count PATCHES (4 mel frames,
40 ms): each clip reports its patches as its size and its decoder tokens as its output. A
replay packs its clips end to end on one patch axis (packing.py), with attention masked to each
1008-frame window, so no clip is padded to whole windows; only the tail of the capacity is.

Budgets and capacities (issue 23). vLLM makes the budgets powers of two from a minimum to a
maximum (`get_encoder_cudagraph_budget_range`): here 64 patches (2.56 s) to the patches the
start-up profile ran (sizing.py; 120 windows = 30240 patches with 600 s clips and 8192 batched
tokens): 64, 128, ..., 16384, 30240. A power-of-two ladder alone pads up to 2x, so each budget
B is captured at four capacities, ceil(B * k / 8) for k = 5..8 (vLLM's `capture_axes`; the
capacity key of a batch comes with its items from `select_encoder_cudagraph_items`): a batch of
T patches, B/2 < T <= B, replays at most 1.25 T slots (40 graphs at the sizes above). Clips per
replay: vLLM's min(max // min, min) = 64. Replay work / eager work, FLOPs of the published
encoder (attention included; `python -m bench.gpu.work`, tests/model_plugins/test_cudagraph.py):

    mix                     1x2s   10x2s  64x5s  20x30s  1x600s  2x600s
    before (whole windows)  56.89  5.69   2.47   1.48    1.48    1.01
    packed                  1.12   1.11   1.11   1.16    1.16    1.07

The mel front end runs once per step (per rank with a data-parallel encoder), not per replay:
the first `select_encoder_cudagraph_items` of a step attaches a lazy `StepAudio` to the step's
kwargs; every replay (and eager fallback) of that step gathers its clips' frames from it.
Enabled by vLLM's own settings (`-cc.cudagraph_mm_encoder=true`; budgets in patches via
`-cc.encoder_cudagraph_token_budgets=[...]`); vLLM's CPU runner never captures, so on CPU this is
inert. GPU capture and its speed are unverified here; the CPU tests drive vLLM's manager with
the graph replaced by a re-run of the forward.
"""

import bisect
from typing import TYPE_CHECKING, Any

import torch
from vllm.config import VllmConfig
from vllm.model_executor.models.interfaces import SupportsEncoderCudaGraph
from vllm.v1.worker.encoder_cudagraph_defs import (
    ENCODER_CUDAGRAPH_AXIS_KEYS_KWARG,
    EncoderCudaGraphCaptureInputs,
    EncoderCudaGraphConfig,
    EncoderCudaGraphReplayBuffers,
    EncoderItemSpec,
)

from model_plugins.host import to_device

from .encoder import gather_rows
from .packing import PADDING_WINDOW

if TYPE_CHECKING:
    from .config import MiDashengLMConfig
    from .encoder import DashengEncoder
    from .projector import SubsampleProjector

MIN_BUDGET_PATCHES = 64  # 2.56 s: the smallest budget, and so at most 64 clips per replay
CAPACITY_EIGHTHS = (5, 6, 7, 8)  # each budget's capacities, in eighths of it
STEP_KEY = "dasheng_step_audio"  # the step's lazy front end, on the kwargs items are selected from
SOURCE_KEY = "dasheng_source"  # (StepAudio, indices into it) on selected kwargs


def capacity(budget: int, eighths: int) -> int:
    return max(1, -(-budget * eighths // 8))


class StepAudio:
    """The front end of one step's clips, computed on first use and then shared by every replay."""

    def __init__(self, encoder: "DashengEncoder", waveforms: list[torch.Tensor]):
        self.encoder = encoder
        self.waveforms = waveforms
        self._features: tuple[torch.Tensor, list[int], list[int]] | None = None

    def features(self) -> tuple[torch.Tensor, list[int], list[int]]:
        """(features (n_mels, columns) as DashengEncoder.features, frame offset per clip, frames per clip)."""
        if self._features is None:
            features, packed = self.encoder.features(self.waveforms)
            self._features = (features, packed.frame_offsets, packed.frames)  # drops the float32 mels
        return self._features


def _waveforms(mm_kwargs: dict[str, Any]) -> list[torch.Tensor]:
    # vLLM stacks equal-length clips into one tensor and lists the others.
    return list(mm_kwargs.get("waveform", []))


class DashengEncoderCudaGraph(SupportsEncoderCudaGraph):
    """Mixin for MiDashengLM: the SupportsEncoderCudaGraph methods, in patches."""

    config: "MiDashengLMConfig"
    encoder: "DashengEncoder"
    projector: "SubsampleProjector"
    _graph_budgets: list[int]  # budgets captured so far, sorted (the manager's, for the capacity key)

    def audio_tokens(self, waveforms: list[torch.Tensor]) -> list[int]:
        raise NotImplementedError  # provided by the model

    def embed_audio_local(self, waveforms: list[torch.Tensor]) -> list[torch.Tensor]:
        raise NotImplementedError  # provided by the model

    def _patches_per_clip(self, waveforms: list[torch.Tensor]) -> list[int]:
        front_end, per_patch = self.encoder.front_end, self.encoder.config.frames_per_patch
        return [front_end.num_frames(int(w.shape[-1])) // per_patch for w in waveforms]

    def _windows_per_clip(self, waveforms: list[torch.Tensor]) -> list[int]:
        per_window = self.encoder.config.patches_per_window
        return [-(-p // per_window) for p in self._patches_per_clip(waveforms)]

    def _capacity_key(self, patches: int) -> int:
        """Eighths of the budget the manager will pick for `patches` (the smallest captured one that fits)."""
        budgets = getattr(self, "_graph_budgets", [])
        at = bisect.bisect_left(budgets, patches)
        if at == len(budgets):
            return CAPACITY_EIGHTHS[-1]  # beyond every budget: runs eagerly, the key is unused
        return next(k for k in CAPACITY_EIGHTHS if capacity(budgets[at], k) >= patches)

    def get_encoder_cudagraph_config(self) -> EncoderCudaGraphConfig:
        def pad_window_ids(dst: torch.Tensor, src: torch.Tensor) -> None:
            dst.fill_(PADDING_WINDOW)
            dst[: src.shape[0]].copy_(src)

        return EncoderCudaGraphConfig(
            modalities=["audio"],
            buffer_keys=["frames", "position", "window", "rows"],
            out_hidden_size=self.config.text_config.hidden_size,
            padding_logics={"window": pad_window_ids},
            capture_axes=(CAPACITY_EIGHTHS,),
        )

    def get_input_modality(self, mm_kwargs: dict[str, Any]) -> str:
        return "audio"

    def get_max_frames_per_video(self) -> int:
        return 1  # no video

    def get_encoder_cudagraph_budget_range(self, vllm_config: VllmConfig) -> tuple[int, int]:
        """(min, max) patches per graph. Max: the patches one eager forward may run on this rank
        (what vLLM's start-up profile measured there, sizing.py)."""
        most = self.encoder.max_windows * self.encoder.config.patches_per_window
        return min(MIN_BUDGET_PATCHES, most), most

    def get_encoder_cudagraph_item_specs(self, mm_kwargs: dict[str, Any]) -> list[EncoderItemSpec]:
        waveforms = _waveforms(mm_kwargs)
        return [
            EncoderItemSpec(input_size=patches, output_tokens=tokens, path_output_tokens={"default": patches})
            for patches, tokens in zip(self._patches_per_clip(waveforms), self.audio_tokens(waveforms), strict=True)
        ]

    def select_encoder_cudagraph_items(self, mm_kwargs: dict[str, Any], indices: list[int]) -> dict[str, Any]:
        """The clips at `indices`, the step's shared front end, and the capacity key of the batch.

        The kwargs we select from carry the front end of THEIR clips (attached on first use): the
        step's when the manager packs a step, a rank's share when it first shards the step over
        data-parallel ranks (the step's is then never computed)."""
        step = mm_kwargs.get(STEP_KEY)
        if step is None:
            step = mm_kwargs[STEP_KEY] = StepAudio(self.encoder, _waveforms(mm_kwargs))
        waveforms = [step.waveforms[i] for i in indices]
        return {
            "waveform": waveforms,
            SOURCE_KEY: (step, list(indices)),
            ENCODER_CUDAGRAPH_AXIS_KEYS_KWARG: (self._capacity_key(sum(self._patches_per_clip(waveforms))),),
        }

    def _source(self, mm_kwargs: dict[str, Any]) -> tuple[StepAudio, list[int]]:
        if SOURCE_KEY in mm_kwargs:
            return mm_kwargs[SOURCE_KEY]
        waveforms = _waveforms(mm_kwargs)
        return StepAudio(self.encoder, waveforms), list(range(len(waveforms)))

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
        self._graph_budgets = sorted({*getattr(self, "_graph_budgets", []), token_budget})
        slots = capacity(token_budget, axis_keys[0] if axis_keys else CAPACITY_EIGHTHS[-1])
        enc = self.encoder.config
        rows = slots // self.projector.factor * self.projector.factor
        return EncoderCudaGraphCaptureInputs(
            values={
                "frames": torch.zeros(slots * enc.frames_per_patch, enc.n_mels, device=device, dtype=dtype),
                "position": torch.zeros(slots, dtype=torch.long, device=device),
                "window": torch.full((slots,), PADDING_WINDOW, dtype=torch.long, device=device),
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
        """The batch's clips end to end: their patches' frames, each patch's index in its window
        and its window's id, and the packed rows that feed each token (clip after clip)."""
        step, indices = self._source(mm_kwargs)
        features, offsets, frames = step.features()
        per_patch, per_window = self.encoder.config.frames_per_patch, self.encoder.config.patches_per_window
        patches = self.encoder.patches_of([frames[i] for i in indices])
        keep = [n * self.projector.factor for n in self.audio_tokens(step.waveforms)]
        starts = [sum(patches[:c]) for c in range(len(patches))]
        total = sum(patches)
        lengths = [min(per_window, p - first) for p in patches for first in range(0, p, per_window)]
        clip_meta = to_device(
            [
                [offsets[i] for i in indices],
                [p * per_patch for p in patches],
                [s * per_patch for s in starts],
                starts,
                [keep[i] for i in indices],
                [sum(keep[i] for i in indices[:c]) for c in range(len(indices))],
            ],
            features.device,
        )
        window_meta = to_device(
            [[0] * len(lengths), lengths, [sum(lengths[:w]) for w in range(len(lengths))]], features.device
        )
        columns = gather_rows(clip_meta[0], clip_meta[1], clip_meta[2], total * per_patch)
        window = torch.repeat_interleave(
            torch.arange(len(lengths), device=features.device), window_meta[1], output_size=total
        )
        return EncoderCudaGraphReplayBuffers(
            values={
                "frames": features.T.index_select(0, columns),
                "position": gather_rows(window_meta[0], window_meta[1], window_meta[2], total),
                "window": window,
                "rows": gather_rows(clip_meta[3], clip_meta[4], clip_meta[5], sum(keep[i] for i in indices)),
            }
        )

    def encoder_cudagraph_forward(self, inputs: dict[str, torch.Tensor], path: str = "default") -> torch.Tensor:
        """-> (capacity // 5, text_hidden): the batch's audio tokens clip after clip, junk after."""
        encoded = self.encoder.forward_packed(inputs["frames"], inputs["position"], inputs["window"])
        return self.projector(encoded.index_select(0, inputs["rows"]))

    def encoder_eager_forward(self, mm_kwargs: dict[str, Any], path: str = "default") -> torch.Tensor:
        """Clips beyond every budget, from the step's front end. Local: with a data-parallel encoder
        vLLM's manager has already sharded the clips."""
        if SOURCE_KEY not in mm_kwargs:
            return torch.cat(self.embed_audio_local(_waveforms(mm_kwargs)))
        step, indices = mm_kwargs[SOURCE_KEY]
        features, offsets, frames = step.features()
        tokens = self.audio_tokens([step.waveforms[i] for i in indices])
        encoded = self.encoder.encode_features(
            features,
            [offsets[i] for i in indices],
            [frames[i] for i in indices],
            keep=[n * self.projector.factor for n in tokens],
        )
        return self.projector(encoded)
