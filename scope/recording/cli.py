"""``daydream-scope render``: render a timeline headlessly, and check it against its recording.

Exit status: 0 rendered (and, with ``--check``, every recorded chunk matched); 1 ``--check``
found a chunk that differs; 2 the timeline is invalid or a file it needs is missing.
"""

from __future__ import annotations

import argparse
import json
import sys

EXIT_OK, EXIT_MISMATCH, EXIT_UNUSABLE = 0, 1, 2

DESCRIPTION = "Render a timeline (a recording's timeline.json, or one written by hand) into an MP4, headlessly."


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="daydream-scope render", description=DESCRIPTION)
    parser.add_argument("timeline", nargs="?", help="The timeline JSON file.")
    parser.add_argument("-o", "--output", help="The MP4 to write (its provenance goes beside it); omitted: only hash the chunks.")
    parser.add_argument("--models-dir", help="Where the weights are (default: the server's models_dir setting).")
    parser.add_argument("--synthetic", action="store_true", help="Write synthetic weights for missing files first.")
    parser.add_argument("--check", action="store_true", help="Exit 1 when a chunk differs from the recording's hash.")
    parser.add_argument("-q", "--quiet", action="store_true", help="No progress bar.")
    parser.add_argument("--schema", action="store_true", help="Print the timeline JSON Schema and exit.")
    return parser


def render_main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    from scope.recording.timeline import InvalidTimeline, timeline_schema

    if args.schema:
        print(json.dumps(timeline_schema(), indent=2))
        return EXIT_OK
    if not args.timeline:
        parser().error("give a timeline file (or --schema)")
    import scope

    bar = None if args.quiet else ProgressBar()
    try:
        result = scope.render(
            args.timeline,
            args.output,
            models_dir=args.models_dir,
            synthetic=args.synthetic,
            progress=bar.update if bar is not None else None,
        )
    except InvalidTimeline as exc:
        print(f"{args.timeline} is not a valid timeline:", file=sys.stderr)
        for error in exc.errors:
            print(f"  {'.'.join(map(str, error['loc'])) or '(document)'}: {error['msg']}", file=sys.stderr)
        return EXIT_UNUSABLE
    except FileNotFoundError as exc:
        print(f"cannot render {args.timeline}: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    finally:
        if bar is not None:
            bar.close()
    written = f" into {args.output}" if args.output else ""
    print(f"rendered {result.chunks} chunks ({result.frames} frames) in {result.seconds:.1f} s{written}")
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    for chunk, recorded, rendered in result.mismatches:
        print(f"chunk {chunk} differs from the recording: rendered {rendered}, recorded {recorded}", file=sys.stderr)
    if result.compared:
        print(f"{result.compared - len(result.mismatches)} of {result.compared} recorded chunks reproduced bit for bit")
    return EXIT_MISMATCH if args.check and result.mismatches else EXIT_OK


class ProgressBar:
    """A tqdm bar over chunks on stderr, sized once the render knows its chunk count."""

    def __init__(self) -> None:
        self._bar = None

    def update(self, done: int, total: int) -> None:
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="chunk", file=sys.stderr, desc="render")
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
