"""Server log files: one per start, rotated, old ones pruned."""

from __future__ import annotations

import datetime
import logging
import logging.handlers
import time
from pathlib import Path

LOG_PREFIX = "scope-logs-"
MAX_BYTES = 5 * 1024 * 1024
BACKUPS = 5
KEEP_SECONDS = 24 * 3600
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class ServerLog:
    """Writes this server's log file and finds the newest one."""

    def __init__(self, logs_dir: Path):
        self.logs_dir = logs_dir
        self.handler: logging.Handler | None = None

    def start(self, verbose: bool = False) -> Path:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self._prune()
        stamp = datetime.datetime.now().strftime("%Y-%m-%d-%H-%M-%S")
        path = self.logs_dir / f"{LOG_PREFIX}{stamp}.log"
        handler = logging.handlers.RotatingFileHandler(path, maxBytes=MAX_BYTES, backupCount=BACKUPS, encoding="utf-8")
        handler.setFormatter(logging.Formatter(FORMAT))
        handler.setLevel(logging.DEBUG if verbose else logging.INFO)
        for name in ("scope", "tornado.access", "ServerApp"):
            logger = logging.getLogger(name)
            logger.addHandler(handler)
            if logger.level == logging.NOTSET or logger.level > logging.INFO:
                logger.setLevel(logging.INFO)
        level = logging.INFO if verbose else logging.WARNING
        for name in ("aiortc", "aioice"):
            logging.getLogger(name).setLevel(level)
        self.handler = handler
        return path

    def stop(self) -> None:
        if self.handler is not None:
            for name in ("scope", "tornado.access", "ServerApp"):
                logging.getLogger(name).removeHandler(self.handler)
            self.handler.close()
            self.handler = None

    def current_file(self) -> Path | None:
        """The newest log file (names sort by their time stamp)."""
        if not self.logs_dir.is_dir():
            return None
        files = sorted(self.logs_dir.glob(f"{LOG_PREFIX}*.log"))
        return files[-1] if files else None

    def _prune(self) -> None:
        cutoff = time.time() - KEEP_SECONDS
        for path in self.logs_dir.glob(f"{LOG_PREFIX}*.log*"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
            except OSError:
                pass
