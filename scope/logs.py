"""Server log files: one per start, rotated, old ones pruned."""

from __future__ import annotations

import datetime
import logging
import logging.handlers
import os
import sys
import time
from pathlib import Path

LOG_PREFIX = "scope-logs-"
MAX_BYTES = 5 * 1024 * 1024
BACKUPS = 5
KEEP_SECONDS = 24 * 3600
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Loggers whose records the file holds; with verbose logging, also the WebRTC libraries'.
LOGGERS = ("scope", "tornado.access", "ServerApp")
WEBRTC_LOGGERS = ("aiortc", "aioice")
#: Scope's lines in the standalone server's terminal, shaped like Jupyter's own.
CONSOLE_FORMAT = "%(color)s[%(levelname)1.1s %(asctime)s.%(msecs).03d Scope]%(end_color)s %(message)s"
CONSOLE_DATEFMT = "%Y-%m-%d %H:%M:%S"


class ServerLog:
    """Writes this server's own log file, the only one it serves.

    Servers may share a logs directory (a standalone server beside a Lab server), so the file
    is named after the start time and the process id, and the server remembers which is its own.
    """

    def __init__(self, logs_dir: Path):
        self.logs_dir = logs_dir
        self.handler: logging.handlers.RotatingFileHandler | None = None
        self.path: Path | None = None
        self._loggers: tuple[str, ...] = ()
        self._console: logging.Handler | None = None

    def start(self, verbose: bool = False) -> Path:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self._prune()
        stamp = datetime.datetime.now().strftime("%Y-%m-%d-%H-%M-%S")
        path = self.logs_dir / f"{LOG_PREFIX}{stamp}-{os.getpid()}.log"
        handler = logging.handlers.RotatingFileHandler(path, maxBytes=MAX_BYTES, backupCount=BACKUPS, encoding="utf-8")
        handler.setFormatter(logging.Formatter(FORMAT))
        handler.setLevel(logging.DEBUG if verbose else logging.INFO)
        # Verbose: Scope's debug lines, and the WebRTC libraries' INFO lines, go to the file too.
        self._loggers = LOGGERS + (WEBRTC_LOGGERS if verbose else ())
        for name in self._loggers:
            logging.getLogger(name).addHandler(handler)
        for name in LOGGERS:
            logger = logging.getLogger(name)
            if logger.level == logging.NOTSET or logger.level > logging.INFO:
                logger.setLevel(logging.INFO)
        if verbose:
            logging.getLogger("scope").setLevel(logging.DEBUG)
        level = logging.INFO if verbose else logging.WARNING
        for name in WEBRTC_LOGGERS:
            logging.getLogger(name).setLevel(level)
        self.handler = handler
        self.path = path
        return path

    def show_in_terminal(self) -> None:
        """Also write Scope's lines to stderr, the standalone server's terminal (INFO and up, DEBUG
        too with verbose logging). Under ``jupyter lab`` the terminal stays Jupyter's."""
        from tornado.log import LogFormatter

        if self._console is None:
            self._console = logging.StreamHandler(sys.stderr)
            self._console.setFormatter(LogFormatter(fmt=CONSOLE_FORMAT, datefmt=CONSOLE_DATEFMT))
            logging.getLogger("scope").addHandler(self._console)

    def stop(self) -> None:
        if self._console is not None:
            logging.getLogger("scope").removeHandler(self._console)
            self._console = None
        if self.handler is not None:
            for name in self._loggers:
                logging.getLogger(name).removeHandler(self.handler)
            self.handler.close()
            self.handler = None

    def current_file(self) -> Path | None:
        """This server's log file (after a rotation: the file being written, not a backup);
        None before the log started or once the file is gone."""
        if self.path is None or not self.path.is_file():
            return None
        return self.path

    def _prune(self) -> None:
        cutoff = time.time() - KEEP_SECONDS
        for path in self.logs_dir.glob(f"{LOG_PREFIX}*.log*"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
            except OSError:
                pass
