"""Shared test fixtures. Tests make their own images; nothing here downloads anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from vit.data.synthetic import make_shapes_dataset


@pytest.fixture(scope="session")
def shapes_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic shapes folder (5 classes x 8 images of 48 px) for the whole session.

    Layout ``<root>/<class>/<NNNNN>.png`` plus ``boxes.json``; treat it as read-only.
    """
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"), num_per_class=8)


@pytest.fixture(scope="session", autouse=True)
def _folder_cache_in_a_temp_folder(tmp_path_factory: pytest.TempPathFactory):
    """The pre-flight cache (vit.data.check) of every test, subprocesses included, goes to a
    temp folder instead of ~/.cache/vit."""
    import os

    previous = os.environ.get("VIT_CACHE_DIR")
    os.environ["VIT_CACHE_DIR"] = str(tmp_path_factory.mktemp("vit_cache"))
    yield
    if previous is None:
        os.environ.pop("VIT_CACHE_DIR", None)
    else:
        os.environ["VIT_CACHE_DIR"] = previous


@pytest.fixture
def saved_figures(monkeypatch: pytest.MonkeyPatch) -> list:
    """Every matplotlib Figure saved during the test, in order, left uncleared so the test can
    read what was drawn (helpers.figures)."""
    from helpers.figures import record_saved_figures

    return record_saved_figures(monkeypatch)
