"""What ``daydream-scope`` prints once it listens: where to go, what is on, how to stop.

Jupyter's own start-up lines (notebook directory, kernels, a ``?token=`` URL and a file://
redirect page) do not apply to the standalone server, which prints these lines instead.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

#: Addresses that mean "every interface": a browser needs a real host instead.
WILDCARD_HOSTS = ("", "0.0.0.0", "::")


def usable_host(ip: str) -> str:
    """A host a browser on this machine can open for a server bound to ``ip``."""
    if ip in WILDCARD_HOSTS:
        return "[::1]" if ip == "::" else "127.0.0.1"
    try:
        if ipaddress.ip_address(ip).version == 6:
            return f"[{ip}]"
    except ValueError:
        pass  # a host name
    return ip


@dataclass(frozen=True)
class Banner:
    version: str
    base_url: str
    #: The query that opens the page when the API needs Jupyter's token (empty when open).
    page_query: str
    synthetic: bool
    models_dir: Path
    log_file: Path | None

    def lines(self) -> list[str]:
        synthetic = (
            "on (written for a pipeline whose weights are missing, when it loads)"
            if self.synthetic else "off (--synthetic writes them)"
        )
        return [
            self.version,
            f"  Page:              {self.base_url}scope/{self.page_query}",
            f"  API docs:          {self.base_url}docs",
            f"  Synthetic weights: {synthetic}",
            f"  Models:            {self.models_dir}",
            f"  Log file:          {self.log_file or 'none'}",
            "  Stop:              press Ctrl-C",
        ]

    def text(self) -> str:
        return "\n".join(self.lines()) + "\n"
