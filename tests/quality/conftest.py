"""Tiny random metric weights written once per session through the real save formats."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def metric_weights(tmp_path_factory) -> dict[str, str]:
    from trimodal.quality.tiny import write_all

    return write_all(tmp_path_factory.mktemp("metric_weights"))
