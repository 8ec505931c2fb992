"""Every client-named path is checked where it is parsed: images in the assets directory, LoRAs
in the LoRA directory, on the data channel, in an offer's ``initialParameters`` and in
``load_params``. The in-kernel API validates without the server's directories: local paths pass.
"""

from __future__ import annotations

import asyncio
import os

import pytest

import scope
from scope.params import ParameterErrors, parse_parameters, path_context
from tests.conftest import wait_for_status
from tests.polling import wait_until
from tests.rtc import ScopeRtcClient, connected

pytestmark = pytest.mark.usefixtures("jp_serverapp")

#: Every stream parameter naming an asset file, with where its first path sits in an error's ``loc``.
ASSET_PATH_FIELDS = {
    "vace_ref_images": ["vace_ref_images", 0],
    "vace_input_frames": ["vace_input_frames"],
    "vace_input_masks": ["vace_input_masks"],
    "first_frame_image": ["first_frame_image"],
    "last_frame_image": ["last_frame_image"],
}


def naming(field: str, path: str) -> dict:
    """A parameters message naming ``path`` in ``field`` (a list for the references)."""
    return {field: [path] if field == "vace_ref_images" else path}


def png_bytes() -> bytes:
    """A real (tiny) PNG: the server reads the images a client names."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


async def load_pattern(api) -> None:
    assert (await api("POST", "api/v1/pipeline/load", {"pipeline_id": "test-pattern"})).status == 200
    await wait_for_status(api, "loaded")


def outside_paths(scope_dirs) -> dict[str, str]:
    """Paths that leave the assets directory: absolute, ``..``, a symlink out, a sibling."""
    assets = scope_dirs["assets"]
    (assets / "escape.png").symlink_to("/etc/passwd")
    sibling = assets.parent / "assets2"
    sibling.mkdir()
    (sibling / "ref.png").write_bytes(b"png")
    return {
        "absolute": "/etc/passwd",
        "dotdot": "../lora/x.png",
        "nested dotdot": "sub/../../assets2/ref.png",
        "absolute dotdot": str(assets / ".." / "assets2" / "ref.png"),
        "symlink out": "escape.png",
        "sibling prefix": str(sibling / "ref.png"),
    }


async def test_data_channel_refuses_paths_outside_and_keeps_streaming(api, test_pipelines, scope_dirs):
    await load_pattern(api)
    (scope_dirs["assets"] / "ref.png").write_bytes(png_bytes())
    (scope_dirs["lora"] / "style.safetensors").write_bytes(b"lora")
    async with connected(api, {"prompts": ["one"]}) as client:
        await asyncio.wait_for(client.channel_open.wait(), 10)
        refusals = [
            ({"vace_ref_images": ["/etc/passwd"]}, ["vace_ref_images", 0]),
            ({"lora_scales": [{"path": "/etc/passwd", "scale": 1}]}, ["lora_scales", 0, "path"]),
            ({"vace_ref_images": ["ref.png", "../lora/x.png"]}, ["vace_ref_images", 1]),
        ]
        for message, loc in refusals:
            client.peer.messages.clear()
            client.send(message)
            rejected = await client.wait_message(lambda m: m.get("type") == "parameters_rejected")
            assert rejected["errors"][0]["loc"] == loc, rejected
            assert "outside" in rejected["errors"][0]["msg"]
        count = len(client.frames)
        await client.wait_frames(count + 5)
        sessions = (await api("GET", "api/v1/webrtc/sessions")).json["sessions"]
        assert len(sessions) == 1, "the session must keep streaming"
        client.peer.messages.clear()
        client.send({"vace_ref_images": ["ref.png", str(scope_dirs["assets"] / "ref.png")]})
        client.send({"lora_scales": [{"path": "style.safetensors", "scale": 0.5}]})
        client.send({"prompts": ["after"]})

        async def sessions_listed() -> list[dict]:
            return (await api("GET", "api/v1/webrtc/sessions")).json["sessions"]

        await wait_until(lambda listed: listed[0]["parameters"]["prompts"][0]["text"] == "after",
                         what="the prompt 'after' in the session's parameters", value=sessions_listed)
        assert not [m for m in client.messages if m.get("type") == "parameters_rejected"], "inside paths are accepted"


def test_traversal_and_symlinks_out_are_refused_inside_paths_accepted(scope_dirs):
    context = path_context(scope_dirs["assets"], scope_dirs["lora"])
    for name, path in outside_paths(scope_dirs).items():
        with pytest.raises(ParameterErrors) as refused:
            parse_parameters({"vace_ref_images": [path]}, context=context)
        assert refused.value.errors[0]["loc"] == ["vace_ref_images", 0], name
    (scope_dirs["assets"] / "inside").mkdir()
    (scope_dirs["assets"] / "inside" / "link.png").symlink_to(scope_dirs["assets"] / "ref.png")
    for path in ("ref.png", "inside/../ref.png", "inside/link.png", str(scope_dirs["assets"] / "ref.png")):
        parsed, _ = parse_parameters({"vace_ref_images": [path]}, context=context)
        assert parsed["vace_ref_images"] == [path], "the path is kept as the client sent it"
    with pytest.raises(ParameterErrors) as refused:
        parse_parameters({"vace_ref_images": ["bad\x00name.png"]}, context=context)
    assert refused.value.errors[0]["loc"] == ["vace_ref_images", 0]
    # A LoRA must be in the LoRA directory, not merely in the assets one.
    with pytest.raises(ParameterErrors) as refused:
        parse_parameters({"lora_scales": [{"path": str(scope_dirs["assets"] / "a.safetensors"), "scale": 1}]}, context=context)
    assert refused.value.errors[0]["loc"] == ["lora_scales", 0, "path"]
    with pytest.raises(ParameterErrors, match="no LoRA file"):  # inside, but not there
        parse_parameters({"lora_scales": [{"path": str(scope_dirs["lora"] / "a.safetensors"), "scale": 1}]}, context=context)
    (scope_dirs["lora"] / "a.safetensors").write_bytes(b"lora")
    parsed, _ = parse_parameters({"lora_scales": [{"path": str(scope_dirs["lora"] / "a.safetensors"), "scale": 1}]}, context=context)
    assert parsed["lora_scales"][0]["path"].endswith("a.safetensors")


@pytest.mark.parametrize("field", list(ASSET_PATH_FIELDS))
def test_every_asset_path_parameter_is_contained(scope_dirs, field):
    context = path_context(scope_dirs["assets"], scope_dirs["lora"])
    for name, path in outside_paths(scope_dirs).items():
        with pytest.raises(ParameterErrors) as refused:
            parse_parameters(naming(field, path), context=context)
        assert refused.value.errors[0]["loc"] == ASSET_PATH_FIELDS[field], name
        assert "outside the assets directory" in refused.value.errors[0]["msg"], name
    parsed, _ = parse_parameters(naming(field, "clip.mp4"), context=context)
    assert parsed == naming(field, "clip.mp4")


@pytest.mark.parametrize("field", list(ASSET_PATH_FIELDS))
async def test_offer_with_any_asset_path_outside_gets_422_naming_the_field(api, test_pipelines, field):
    await load_pattern(api)
    for path in ("/etc/passwd", "../lora/x.png"):
        reply = await ScopeRtcClient(api, recvonly=True).connect(naming(field, path), expect_status=422)
        error = reply.json["detail"][0]
        assert error["loc"] == ["body", "initialParameters", *ASSET_PATH_FIELDS[field]], error
        assert "outside the assets directory" in error["msg"]
    assert (await api("GET", "api/v1/webrtc/sessions")).json["sessions"] == []


async def test_offer_initial_parameters_outside_get_422(api, test_pipelines):
    await load_pattern(api)
    for params, loc in (
        ({"vace_ref_images": ["/etc/passwd"]}, ["body", "initialParameters", "vace_ref_images", 0]),
        ({"lora_scales": [{"path": "../../etc/passwd", "scale": 1}]}, ["body", "initialParameters", "lora_scales", 0, "path"]),
    ):
        reply = await ScopeRtcClient(api, recvonly=True).connect(params, expect_status=422)
        assert reply.json["detail"][0]["loc"] == loc
    assert (await api("GET", "api/v1/webrtc/sessions")).json["sessions"] == []


async def test_load_params_loras_outside_get_422_naming_the_field(api, scope_dirs):
    for path in ("/etc/passwd", "../assets/x.safetensors", str(scope_dirs["assets"] / "x.safetensors")):
        body = {"pipeline_id": "longlive", "load_params": {"loras": [{"path": path}]}}
        reply = await api("POST", "api/v1/pipeline/load", body)
        assert reply.status == 422, reply.body
        error = reply.json["detail"][0]
        assert error["loc"] == ["body", "load_params", "loras", 0, "path"], error
        assert "outside the LoRA directory" in error["msg"]
    # Inside the LoRA directory, a file that is not there is named as such.
    inside = {"pipeline_id": "longlive", "load_params": {"loras": [{"path": "missing.safetensors"}]}}
    reply = await api("POST", "api/v1/pipeline/load", inside)
    assert reply.status == 422 and reply.json["detail"][0]["loc"] == ["body", "load_params", "loras", 0, "path"]
    assert "no LoRA file 'missing.safetensors'" in reply.json["detail"][0]["msg"]
    assert (await api("GET", "api/v1/pipeline/status")).json["status"] == "not_loaded"


def test_in_kernel_generate_allows_local_paths(test_pipelines, tmp_path):
    local = tmp_path / "my-reference.png"
    local.write_bytes(b"png")
    pipeline = scope.load_pipeline("test-pattern", models_dir=tmp_path)
    stream = pipeline.open_stream()
    chunk = stream.generate(prompts="a fox", vace_ref_images=[str(local), os.path.relpath("/etc/passwd")])
    assert chunk.frames.size
    assert stream.seen[-1]["params"]["vace_ref_images"] == [str(local), os.path.relpath("/etc/passwd")]
