"""Stream parameters that name asset files: read once when a client names them, resolved for the stream.

Validation keeps these paths inside the assets directory but leaves them as the client wrote
them (absolute, or relative to the assets directory). The server therefore hands the stream
the resolved paths, so a relative name never reads a file beside the server's working
directory, and it reads each file once when it is named, with the stream's own readers, so an
unreadable file is refused naming its parameter instead of failing chunk after chunk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scope.paths import resolve_inside
from scope.pipelines.wan.vace_inputs import LoopingFrames, read_image

#: Parameters naming one still image each (a list for the references).
IMAGE_PARAMETERS = ("vace_ref_images", "first_frame_image", "last_frame_image")
#: Parameters naming an image or a video, with the colour mode the stream reads them in.
FRAME_PARAMETERS = {"vace_input_frames": "RGB", "vace_input_masks": "L"}
ASSET_PARAMETERS = (*IMAGE_PARAMETERS, *FRAME_PARAMETERS)


def _entries(name: str, value: Any) -> list[tuple[list[Any], str]]:
    """``(loc, path)`` of each path ``value`` holds for parameter ``name``."""
    if isinstance(value, str):
        return [([name], value)]
    if isinstance(value, list):
        return [([name, index], item) for index, item in enumerate(value) if isinstance(item, str)]
    return []


def names_assets(update: dict[str, Any]) -> bool:
    """Whether ``update`` names any asset file (null and ``[]`` name none)."""
    return any(_entries(name, update.get(name)) for name in ASSET_PARAMETERS)


def _read(name: str, path: Path) -> None:
    if name in FRAME_PARAMETERS:
        LoopingFrames(path, FRAME_PARAMETERS[name]).take(1)
    else:
        read_image(path)


def unreadable_assets(update: dict[str, Any], assets_dir: Path, skip: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    """``{"loc", "msg", "type"}`` for each named file the stream could not read (none: all fine).

    Reads what a chunk will read: the whole image, or a video's first frame. ``skip`` holds
    parameters the pipeline ignores, whose files are never read.
    """
    errors = []
    for name in ASSET_PARAMETERS:
        if name in skip:
            continue
        for loc, value in _entries(name, update.get(name)):
            kind = "an image or a video" if name in FRAME_PARAMETERS else "an image"
            try:
                path = resolve_inside(assets_dir, value)
                if not path.is_file():
                    raise ValueError("no such file in the assets directory")
                _read(name, path)
            except Exception as exc:  # whatever the decoders raise, the client gets it named
                msg = f"'{value}' is not {kind} the stream can read: {exc}"
                errors.append({"loc": loc, "msg": msg, "type": "unreadable_asset"})
    return errors


def resolved_assets(params: dict[str, Any], assets_dir: Path) -> dict[str, Any]:
    """``params`` with every asset path made absolute inside ``assets_dir`` (for the stream)."""
    out = dict(params)
    for name in ASSET_PARAMETERS:
        value = params.get(name)
        if isinstance(value, str):
            out[name] = str(resolve_inside(assets_dir, value))
        elif isinstance(value, list):
            out[name] = [str(resolve_inside(assets_dir, item)) if isinstance(item, str) else item for item in value]
    return out
