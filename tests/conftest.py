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
