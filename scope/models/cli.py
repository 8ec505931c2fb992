"""``download_models``: fetch a pipeline's weights from the command line, with a progress bar
(on a terminal; one line per artifact when the output is a pipe or a file).

Exit codes: 0 done (or nothing to do), 1 download failed, 2 bad usage or unknown pipeline,
130 interrupted (partial files are kept, so running it again resumes).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, TextIO

from scope.config import DEFAULT_MODELS_DIR, ScopeSettings
from scope.models.artifacts import PIPELINE_ARTIFACTS, Artifact, format_bytes

if TYPE_CHECKING:
    from scope.models.download import Progress

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UnknownPipelineError(LookupError):
    """The pipeline id is neither registered nor known to need artifacts."""

    def __init__(self, pipeline_id: str, known: list[str]):
        super().__init__(pipeline_id)
        self.pipeline_id = pipeline_id
        self.known = known


def _registry() -> ModuleType | None:
    """The pipeline registry module, or None where this build has none."""
    try:
        from scope.pipelines import registry
    except ModuleNotFoundError as exc:
        if exc.name not in ("scope.pipelines", "scope.pipelines.registry"):
            raise
        return None
    return registry


def _artifacts_for(pipeline_id: str) -> tuple[Artifact, ...]:
    """Artifacts of a pipeline: its registered class's, else the built-in table's."""
    registry = _registry()
    if registry is not None:
        try:
            return tuple(registry.get_pipeline_class(pipeline_id).artifacts)
        except KeyError:
            pass
    if pipeline_id in PIPELINE_ARTIFACTS:
        return PIPELINE_ARTIFACTS[pipeline_id]
    known = list(registry.pipeline_ids()) if registry is not None else []
    known += [pid for pid in PIPELINE_ARTIFACTS if pid not in known]
    raise UnknownPipelineError(pipeline_id, known)


class _ProgressBar:
    """A tqdm bar over the bytes of the whole pipeline, labelled with the current repo."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=None, unit="B", unit_scale=True, unit_divisor=1024, desc="listing files")
        self._label: str | None = None

    def update(self, progress: Progress) -> None:
        bar = self._bar
        if progress.bytes_total and bar.total != progress.bytes_total:
            bar.total = progress.bytes_total
        if progress.current_artifact and progress.current_artifact != self._label:
            self._label = progress.current_artifact
            bar.set_description_str(progress.current_artifact, refresh=False)
        bar.update(progress.bytes_done - bar.n)

    def close(self, complete: bool = True) -> None:
        self._bar.close()


class _ProgressLines:
    """Progress for a pipe or a log file: one line per artifact as it finishes.

    A bar redrawn with carriage returns turns into fragments there (``0.00B [00:00, ?B/s]``).
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._label: str | None = None
        self._start = self._done = 0

    def update(self, progress: Progress) -> None:
        if progress.current_artifact and progress.current_artifact != self._label:
            self._finish("done")
            self._label, self._start = progress.current_artifact, self._done
        if progress.bytes_done:  # 0 comes with a new total (listing), not with bytes going back
            self._done = progress.bytes_done

    def _finish(self, state: str) -> None:
        """The line of the artifact just left; one that got no bytes (only listed) has none."""
        if self._label is not None and self._done > self._start:
            print(f"{self._label}: {format_bytes(self._done - self._start)} {state}", file=self._stream, flush=True)
        self._label = None

    def close(self, complete: bool = True) -> None:
        self._finish("done" if complete else "stopped")


def _progress() -> _ProgressBar | _ProgressLines:
    """A bar on a terminal, plain lines anywhere else."""
    return _ProgressBar() if sys.stderr.isatty() else _ProgressLines(sys.stderr)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="download_models", description="Download the model weights a pipeline needs."
    )
    parser.add_argument("--pipeline", "-p", required=True, help="pipeline id, e.g. longlive")
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=None,
        help=f"where to store weights (default: $DAYDREAM_SCOPE_MODELS_DIR or {DEFAULT_MODELS_DIR})",
    )
    parser.add_argument(
        "--synthetic",
        action="store_true",
        help="write tiny random weights in the real file layouts instead of downloading "
        "(for trying Scope without a GPU or the real weights)",
    )
    return parser.parse_args(argv)


def download_models_main(argv: list[str] | None = None) -> int:
    """Entry point of ``download_models --pipeline ID [--models-dir DIR] [--synthetic]``; returns the exit code."""
    args = _parse_args(argv)
    pipeline_id: str = args.pipeline
    try:
        artifacts = _artifacts_for(pipeline_id)
    except UnknownPipelineError as exc:
        print(f"ERROR: unknown pipeline '{pipeline_id}'. Known: {', '.join(exc.known)}", file=sys.stderr)
        return EXIT_USAGE
    if not artifacts:
        print(f"Pipeline '{pipeline_id}' needs no model files; nothing to download.")
        return EXIT_OK

    from scope.models.download import DownloadManager

    settings = ScopeSettings()
    if args.models_dir:
        settings.models_dir = str(args.models_dir)
    models_dir = settings.models_path
    manager = DownloadManager(models_dir)
    if args.synthetic:
        print(f"Writing synthetic weights for '{pipeline_id}' into {models_dir}")
    else:
        print(f"Downloading models for '{pipeline_id}' from {manager.endpoint} into {models_dir}")
    bar = _progress()
    try:
        manager.download(pipeline_id, artifacts, on_progress=bar.update, synthetic=args.synthetic)
    except KeyboardInterrupt:
        bar.close(complete=False)
        print("Interrupted; partial files are kept and the next run resumes them.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        bar.close(complete=False)
        logger.debug("download failed", exc_info=True)
        print(f"ERROR: {exc}", file=sys.stderr)
        return EXIT_FAILED
    bar.close()
    print(f"All models for '{pipeline_id}' are in {models_dir}")
    return EXIT_OK
