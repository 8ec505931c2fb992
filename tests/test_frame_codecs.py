"""The frames the WebSocket and headless transports carry: what a client decodes, what a server refuses."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
from PIL import Image

from scope.streaming.frame_codecs import (
    MAX_INPUT_SIDE,
    H264Encoder,
    InputImageError,
    JpegEncoder,
    TsMuxer,
    decode_input,
    encode_still,
    h264_available,
)
from scope.streaming.tracks import VIDEO_CLOCK_RATE

needs_h264 = pytest.mark.skipif(not h264_available(), reason="PyAV's FFmpeg has no libx264")


def frames(count: int, height: int = 64, width: int = 96) -> list[np.ndarray]:
    """A bar moving right: each frame differs from the one before."""
    out = []
    for index in range(count):
        frame = np.zeros((height, width, 3), np.uint8)
        frame[:, (index * 5) % width : (index * 5) % width + 8] = (240, 200, 40)
        out.append(frame)
    return out


def image_bytes(array: np.ndarray, image_format: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, image_format)
    return buffer.getvalue()


@needs_h264
def test_h264_access_units_decode_one_by_one_as_sent():
    """Each message is one access unit a decoder shows at once: no frame is held back for the
    next, the first is an IDR carrying its SPS, and the picture is the frame sent."""
    encoder, decoder = H264Encoder(), av.CodecContext.create("h264", "r")
    sent = frames(8)
    for index, frame in enumerate(sent):
        payload, key = encoder.encode(frame, index * VIDEO_CLOCK_RATE // 30)
        assert payload.startswith(b"\x00\x00\x00\x01"), "Annex B start code"
        nal_types = {byte & 0x1F for byte in _nal_headers(payload)}
        assert key == (index == 0), index
        if key:
            assert {7, 8, 5} <= nal_types, nal_types  # SPS, PPS, IDR slice
        [picture] = decoder.decode(av.Packet(payload))
        shown = picture.to_ndarray(format="rgb24")
        assert shown.shape == frame.shape
        assert np.abs(shown.astype(int) - frame).mean() < 6, index


@needs_h264
def test_h264_starts_anew_on_a_new_size():
    encoder = H264Encoder()
    encoder.encode(frames(1)[0], 0)
    payload, key = encoder.encode(frames(1, 48, 80)[0], 3000)
    assert key, "a new size starts with an IDR a decoder can start from"
    [picture] = av.CodecContext.create("h264", "r").decode(av.Packet(payload))
    assert (picture.width, picture.height) == (80, 48)


def test_jpeg_frames_are_key_frames_of_the_picture_sent():
    frame = frames(3)[2]
    payload, key = JpegEncoder().encode(frame, 0)
    assert key
    shown = np.asarray(Image.open(io.BytesIO(payload)).convert("RGB"))
    assert np.abs(shown.astype(int) - frame).mean() < 6


@pytest.mark.parametrize("image_format", ["JPEG", "PNG", "WEBP"])
def test_input_images_a_canvas_makes_decode(image_format):
    frame = frames(2)[1]
    decoded = decode_input(image_bytes(frame, image_format))
    assert decoded.shape == frame.shape and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - frame).mean() < 8


def test_input_that_is_no_image_or_too_large_is_refused_before_decoding():
    with pytest.raises(InputImageError, match="not an image"):
        decode_input(b"\xff\xd8 not really a jpeg")
    gif = io.BytesIO()
    Image.new("RGB", (4, 4)).save(gif, "GIF")
    with pytest.raises(InputImageError, match="GIF images are not taken"):
        decode_input(gif.getvalue())
    # A PNG that says it is huge: refused from its header, its pixels never decoded.
    wide = image_bytes(np.zeros((1, MAX_INPUT_SIDE + 1, 3), np.uint8), "PNG")
    with pytest.raises(InputImageError, match="too large"):
        decode_input(wide)


def test_still_frames_as_jpeg_and_png():
    frame = frames(4)[3]
    png = encode_still(frame, "png", 85)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), frame), "PNG is lossless"
    jpeg = encode_still(frame, "jpeg", 95)
    assert Image.open(io.BytesIO(jpeg)).format == "JPEG"


def test_mpeg_ts_plays_every_frame_at_the_pace_of_its_timestamps():
    written: list[bytes] = []
    muxer = TsMuxer(written.append)
    sent = frames(12)
    for index, frame in enumerate(sent):
        muxer.add(frame, 1000 + index * VIDEO_CLOCK_RATE // 15)  # 15 fps, starting at any clock value
    muxer.close()
    container = av.open(io.BytesIO(b"".join(written)), format="mpegts")
    decoded = list(container.decode(video=0))
    assert len(decoded) == len(sent)
    times = [float(frame.pts * frame.time_base) for frame in decoded]
    gaps = np.diff(times)
    assert np.allclose(gaps, 1 / 15, atol=1e-3), gaps
    assert np.abs(decoded[-1].to_ndarray(format="rgb24").astype(int) - sent[-1]).mean() < 8


def _nal_headers(payload: bytes) -> list[int]:
    """The first byte of every NAL unit in an Annex B payload."""
    headers, index = [], payload.find(b"\x00\x00\x01")
    while index != -1:
        headers.append(payload[index + 3])
        index = payload.find(b"\x00\x00\x01", index + 3)
    return headers
