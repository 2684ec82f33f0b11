"""Shared fixtures of the default test suite."""

from __future__ import annotations

import pytest

from clip_helpers import one_thread


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The whole suite, module fixtures included, runs torch on one thread: its models are tiny,
    and on a shared 2-core machine OpenMP threads spin-waiting on each other make two threads far
    slower than one."""
    with one_thread():
        yield
