"""The one accepted way for a test not to run: saying why it cannot run on this kind of machine.

Loaded as a plugin by ``tests/conftest.py``, it reports any other skip (``pytest.skip``,
``skipif``, ``importorskip``, at test or module level) and any ``xfail`` as a failure: a
dependency the suite declares is imported plainly and a file the checkout holds is read plainly,
so something missing fails loudly instead of quietly removing a test from the run.
"""

from __future__ import annotations

import pytest

#: Starts the reason of every accepted skip; the report hook looks for it.
PREFIX = "cannot run on this kind of machine: "


def cannot_run_here(reason: str) -> None:
    """Skip the running test (or module, at import) because the machine lacks ``reason``."""
    __tracebackhide__ = True  # report the caller's line
    if not reason.strip():
        raise ValueError("say what this machine lacks")
    pytest.skip(PREFIX + reason, allow_module_level=True)


def justified(reason: str) -> bool:
    """Whether a skip's reason came from :func:`cannot_run_here`."""
    return reason.removeprefix("Skipped: ").startswith(PREFIX)


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    return longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)


def _refuse(report, why: str) -> None:
    report.outcome = "failed"
    report.longrepr = why


def _check(report) -> None:
    if hasattr(report, "wasxfail"):
        _refuse(report, f"xfail hides a test's result ({report.wasxfail or 'no reason'}): fix the test "
                        "or the code, or remove the test")
    elif report.skipped and not justified(reason := _skip_reason(report)):
        _refuse(report, f"skipped without saying why it cannot run on this kind of machine ({reason}). "
                        "Install or restore what it needs, or call tests.skips.cannot_run_here(reason).")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _check(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _check(outcome.get_result())
