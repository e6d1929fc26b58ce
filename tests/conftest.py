"""Shared test settings: few threads, the data mirror, and skips with a reason when data is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

_DEFAULT_MIRROR = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if not os.environ.get("LLMSCRATCH_DATA_MIRROR") and (_DEFAULT_MIRROR / "README.md").exists():
    os.environ["LLMSCRATCH_DATA_MIRROR"] = str(_DEFAULT_MIRROR)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test downloads into a private temporary cache, never into ~/.cache."""
    if "LLMSCRATCH_TEST_CACHE" not in os.environ:
        monkeypatch.setenv("LLMSCRATCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def mirror_file(name: str) -> Path:
    """A file of the data mirror, or skip the test with a clear reason."""
    mirror = os.environ.get("LLMSCRATCH_DATA_MIRROR")
    if not mirror:
        pytest.skip("data mirror not set (LLMSCRATCH_DATA_MIRROR) and ../shared/data absent")
    path = Path(mirror) / name
    if not path.exists():
        pytest.skip(f"{name} not in the data mirror {mirror}")
    return path
