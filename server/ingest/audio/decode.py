"""The two decoders, each feeding a ``Normaliser`` block by block: libsndfile (WAV, FLAC, Ogg, AIFF, MP3) and
FFmpeg through PyAV (everything else in ``audio_sniff.DEMUXERS``, and libsndfile's failures).

A decoder that cannot read the bytes raises ``DecodeFailed``; a limit crossed raises ``InvalidAudio`` (never
retried with the other decoder). FFmpeg only ever runs the demuxer it is told to (or, with none known, one that
its probe picks from the allow-list) and may open no protocol: no file, no socket, nothing but the bytes given.
"""

from __future__ import annotations

import io
import time

import av
import numpy as np
import soundfile as sf

from server.errors import InvalidAudio, InvalidRequest
from server.ingest.audio.limits import BLOCK_SAMPLES, TARGET_RATE, AudioLimits, Clip, check_length, check_stream
from server.ingest.audio.sink import Normaliser
from server.ingest.audio.sniff import DEMUXERS

# Decoder libraries raise a variety of types on hostile bytes (av.error.* are OSError/ValueError subclasses,
# libsndfile's are RuntimeError); MemoryError is deliberately absent: it is not the client's fault.
_DECODER_ERRORS = (
    av.error.FFmpegError,
    OSError,
    RuntimeError,
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    ArithmeticError,
    EOFError,
)

_FFMPEG_OPTIONS = {
    "format_whitelist": ",".join(sorted(DEMUXERS)),  # refuse any other demuxer, whatever the probe says
    "protocol_whitelist": "none",  # no nested opens (concat/HLS/SDP/dref): no files, no sockets
}
_FFMPEG_DEMUXER_OPTIONS = {"mov": {"enable_drefs": "0", "use_absolute_path": "0"}}  # FFmpeg's defaults, pinned

_PCM16_EXACT = frozenset({"PCM_16", "PCM_S8", "PCM_U8"})
"""libsndfile subtypes whose samples int16 holds exactly (FLAC and WAV alike report these)."""
_UNKNOWN_FRAMES = 1 << 62  # libsndfile's "length unknown" (FLAC without a total in STREAMINFO) is ~2**63


class DecodeFailed(Exception):
    """The decoder cannot read these bytes (unsupported or corrupt); another decoder may."""


def decode_soundfile(raw: bytes, limits: AudioLimits, param: str, deadline: float) -> Clip:
    """libsndfile → clip; int16 kept exact for 16-bit-or-less PCM already at 16 kHz mono."""
    try:
        with sf.SoundFile(io.BytesIO(raw)) as f:
            rate, channels, frames = f.samplerate, f.channels, f.frames
            check_stream(rate, channels, limits, param)
            if frames < _UNKNOWN_FRAMES and f.format != "MPEG":  # MP3 lengths are estimates: only decoding counts
                check_length(frames, frames * channels, rate, limits, param)
            exact = rate == TARGET_RATE and channels == 1 and f.subtype in _PCM16_EXACT
            sink = Normaliser(rate, channels, limits, param, deadline, exact)
            block = max(1, BLOCK_SAMPLES // channels)
            while len(y := f.read(block, dtype="int16" if exact else "float32", always_2d=True)):
                sink.push(y)
    except InvalidRequest:
        raise
    except _DECODER_ERRORS as exc:
        raise DecodeFailed(str(exc)) from exc
    if sink.frames == 0:  # e.g. a truncated Ogg, which libsndfile reads as empty: FFmpeg reads its pages
        raise DecodeFailed("libsndfile decoded no audio")
    return sink.clip()


class _DeadlineReader(io.BytesIO):
    """The client's bytes as FFmpeg reads them, refusing to go on past the decode deadline (FFmpeg may spin in a
    demuxer without producing a frame; each of its reads comes back here)."""

    def __init__(self, raw: bytes, deadline: float, limits: AudioLimits, param: str) -> None:
        super().__init__(raw)
        self.deadline, self.limits, self.param = deadline, limits, param

    def read(self, size: int | None = -1) -> bytes:
        if time.monotonic() > self.deadline:
            raise InvalidAudio(
                f"audio took longer than {self.limits.decode_timeout_s:g} s to decode",
                param=self.param,
                code="audio_decode_timeout",
            )
        return super().read(size)


def decode_ffmpeg(raw: bytes, demuxer: str | None, limits: AudioLimits, param: str, deadline: float) -> Clip:
    """FFmpeg via PyAV with ``demuxer`` (None: FFmpeg probes, and may open only an allow-listed demuxer)."""
    options = {**_FFMPEG_OPTIONS, **_FFMPEG_DEMUXER_OPTIONS.get(demuxer or "", {})}
    try:
        with av.open(
            _DeadlineReader(raw, deadline, limits, param),
            mode="r",
            format=demuxer,
            container_options=options,
            metadata_errors="replace",
        ) as container:
            if not container.streams.audio:
                raise DecodeFailed("no audio stream")
            stream = container.streams.audio[0]
            codec = stream.codec_context
            if codec is None:  # a codec FFmpeg has no decoder for
                raise DecodeFailed("no decoder for the audio stream")
            sink = Normaliser(codec.sample_rate, codec.channels, limits, param, deadline)
            _pump(container, stream, sink)
    except InvalidRequest:
        raise
    except _DECODER_ERRORS as exc:
        raise DecodeFailed(str(exc)) from exc
    return sink.clip()  # possibly empty: an audio stream without samples (decode_audio answers audio_empty)


def _pump(container: av.container.InputContainer, stream: av.AudioStream, sink: Normaliser) -> None:
    """Demux → decode → batch into blocks → sink. Like FFmpeg's own CLI, a packet the codec rejects is skipped and a
    demuxer error after some audio ends the stream: the audio present is served (truncated or damaged files)."""
    batch: list[np.ndarray] = []
    batched, key = 0, None
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            break
        except av.error.FFmpegError:
            if sink.frames + batched == 0:
                raise
            break
        try:
            frames = packet.decode()
        except av.error.FFmpegError:
            sink.check_deadline()
            continue
        for frame in frames:
            if frame.sample_rate != sink.rate:
                raise InvalidAudio(
                    "audio sample rate changes mid-stream", param=sink.param, code="unsupported_audio_format"
                )
            block = _frame_block(frame)
            if key != (block.dtype, block.shape[1]) or batched >= BLOCK_SAMPLES // block.shape[1]:
                _flush(batch, sink)
                batched, key = 0, (block.dtype, block.shape[1])
            batch.append(block)
            batched += len(block)
    _flush(batch, sink)


def _frame_block(frame: av.AudioFrame) -> np.ndarray:
    """An audio frame as a (frames, channels) array in its own sample type."""
    channels = frame.layout.nb_channels
    arr = frame.to_ndarray()
    return arr.T if frame.format.is_planar else arr.reshape(-1, channels)


def _flush(batch: list[np.ndarray], sink: Normaliser) -> None:
    if not batch:
        return
    block = batch[0] if len(batch) == 1 else np.concatenate(batch)
    batch.clear()
    if block.dtype == np.uint8:
        block = (block.astype(np.float32) - 128.0) / 128.0
    elif block.dtype.kind == "i":  # integer sample formats → [-1, 1)
        block = block.astype(np.float32) * np.float32(1.0 / (np.iinfo(block.dtype).max + 1))
    sink.push(block)
