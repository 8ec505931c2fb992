"""Frames in and out of the transports that carry video themselves (WebSocket, MPEG-TS over HTTP).

Output is H.264 where PyAV's FFmpeg has libx264 (baseline, no B-frames, x264's zero-latency
tuning: each frame leaves as soon as it is encoded, and a decoder shows it at once), or one
JPEG per frame, which every browser decodes. Input frames are images a browser can make from
a canvas (JPEG, PNG, WebP).
"""

from __future__ import annotations

import fractions
import functools
import io
from collections.abc import Callable

import av
import numpy as np
from PIL import Image

from scope.streaming.tracks import VIDEO_CLOCK_RATE

JPEG_QUALITY = 80
#: Seconds between H.264 key frames (a decoder that starts late waits at most this long).
KEYFRAME_INTERVAL_S = 2.0
#: The frame rate the encoders are told (timestamps, not this, say when a frame is shown).
NOMINAL_FPS = 30
#: Input images the WebSocket transport decodes, and their largest side.
INPUT_FORMATS = ("JPEG", "PNG", "WEBP")
MAX_INPUT_SIDE = 4096
X264_OPTIONS = {"preset": "ultrafast", "tune": "zerolatency", "profile": "baseline", "crf": "23"}


@functools.cache
def h264_available() -> bool:
    try:
        av.codec.Codec("libx264", "w")
    except ValueError:  # UnknownCodecError
        return False
    return True


def output_encodings() -> list[str]:
    """What the WebSocket transport can send, best first."""
    return ["h264", "jpeg"] if h264_available() else ["jpeg"]


def even(array: np.ndarray) -> np.ndarray:
    """``array`` cropped to even sides (4:2:0 chroma needs them)."""
    height, width = array.shape[:2]
    return array[: height - height % 2, : width - width % 2]


class JpegEncoder:
    """One JPEG per frame: every frame is a key frame."""

    name = "jpeg"

    def encode(self, array: np.ndarray, pts: int) -> tuple[bytes, bool]:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, "JPEG", quality=JPEG_QUALITY)
        return buffer.getvalue(), True


class H264Encoder:
    """H.264 access units in Annex B, SPS and PPS before every IDR; a new size starts anew."""

    name = "h264"

    def __init__(self) -> None:
        self._context: av.VideoCodecContext | None = None
        self._size: tuple[int, int] | None = None

    def _open(self, width: int, height: int) -> av.VideoCodecContext:
        context = av.CodecContext.create("libx264", "w")
        context.width, context.height = width, height
        context.pix_fmt = "yuv420p"
        context.time_base = fractions.Fraction(1, VIDEO_CLOCK_RATE)
        context.framerate = fractions.Fraction(NOMINAL_FPS, 1)
        context.gop_size = int(KEYFRAME_INTERVAL_S * NOMINAL_FPS)
        context.max_b_frames = 0
        context.options = dict(X264_OPTIONS)
        context.open()
        return context

    def encode(self, array: np.ndarray, pts: int) -> tuple[bytes, bool]:
        array = even(array)
        size = (array.shape[1], array.shape[0])
        if self._context is None or size != self._size:
            self._context, self._size = self._open(*size), size
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
        frame.pts = pts
        packets = self._context.encode(frame)
        return b"".join(bytes(p) for p in packets), any(p.is_keyframe for p in packets)


def make_encoder(encoding: str) -> JpegEncoder | H264Encoder:
    return H264Encoder() if encoding == "h264" else JpegEncoder()


class InputImageError(ValueError):
    """An input frame that is not an image the transport takes."""


def decode_input(payload: bytes) -> np.ndarray:
    """An input frame as uint8 RGB; the header is read first, so a huge image is refused
    before its pixels are decoded."""
    try:
        image = Image.open(io.BytesIO(payload))
    except Exception as exc:
        raise InputImageError(f"not an image: {exc}") from None
    if image.format not in INPUT_FORMATS:
        raise InputImageError(f"{image.format} images are not taken; send JPEG, PNG or WebP")
    if max(image.size) > MAX_INPUT_SIDE or min(image.size) < 1:
        raise InputImageError(f"{image.size[0]}x{image.size[1]} is too large: at most {MAX_INPUT_SIDE} pixels a side")
    try:
        return np.asarray(image.convert("RGB"))
    except Exception as exc:
        raise InputImageError(f"the image cannot be decoded: {exc}") from None


def encode_still(array: np.ndarray, image_format: str, quality: int) -> bytes:
    """One frame as a JPEG or PNG file (the headless session's ``frame`` endpoint)."""
    buffer = io.BytesIO()
    if image_format == "png":
        Image.fromarray(array).save(buffer, "PNG", compress_level=1)
    else:
        Image.fromarray(array).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


class TsMuxer:
    """A live MPEG-TS stream of H.264 from frames, handed out as bytes as it is written.

    MPEG-TS keeps 90 kHz timestamps, the output track's own clock, so frames play at the pace
    they were made. Each reader has its own muxer, starting on a key frame.
    """

    def __init__(self, on_bytes: Callable[[bytes], None]):
        self._on_bytes = on_bytes
        self._container = av.open(self, "w", format="mpegts")
        self._stream: av.VideoStream | None = None
        self._size: tuple[int, int] | None = None
        self._first_pts: int | None = None

    def write(self, data: bytes) -> int:  # the container's file
        self._on_bytes(bytes(data))
        return len(data)

    def _open_stream(self, width: int, height: int) -> av.VideoStream:
        codec = "libx264" if h264_available() else "mpeg4"
        stream = self._container.add_stream(codec, rate=NOMINAL_FPS)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.time_base = fractions.Fraction(1, VIDEO_CLOCK_RATE)
        stream.codec_context.time_base = fractions.Fraction(1, VIDEO_CLOCK_RATE)
        stream.codec_context.gop_size = int(KEYFRAME_INTERVAL_S * NOMINAL_FPS)
        stream.codec_context.max_b_frames = 0
        if codec == "libx264":
            stream.codec_context.options = dict(X264_OPTIONS)
        return stream

    def add(self, array: np.ndarray, pts: int) -> None:
        array = even(array)
        size = (array.shape[1], array.shape[0])
        if self._stream is None:
            self._stream, self._size = self._open_stream(*size), size
        elif size != self._size:
            # One stream keeps one size: a frame of another size is scaled to it.
            array = np.asarray(Image.fromarray(array).resize(self._size))
        if self._first_pts is None:
            self._first_pts = pts
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
        frame.pts = pts - self._first_pts
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def close(self) -> None:
        try:
            if self._stream is not None:
                for packet in self._stream.encode(None):
                    self._container.mux(packet)
        finally:
            self._container.close()
