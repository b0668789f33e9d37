"""Data sources: one interface, chosen in one place (``vit.data.sources``). A new source is one
class and one registration: the toy source below, in this file alone, trains a run."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from vit.config import load_config
from vit.data import sources
from vit.data.sources import DataSource, LoaderOptions, RunData, open_source
from vit.errors import ConfigError

VIT = Path(__file__).resolve().parent.parent / "vit"


class ToySource(DataSource):
    """``toy:N``: N random 16 px images of two classes, held in memory."""

    name = "toy"

    @classmethod
    def accepts(cls, spec) -> bool:
        return str(spec).startswith("toy:")

    def prepare(self, cfg) -> RunData:
        n = int(str(self.spec).removeprefix("toy:"))
        samples = [(f"toy/{i}", i % 2) for i in range(n)]
        return RunData(root=Path("toy"), classes=["even", "odd"], train_samples=samples[:-4],
                       val_samples=samples[-4:], split={"kind": "toy", "n": n}, source=self)

    def loaders(self, cfg, data: RunData, options: LoaderOptions):
        def loader(samples, shuffle):
            g = torch.Generator().manual_seed(len(samples))
            images = torch.randn(len(samples), 3, options.img_size, options.img_size, generator=g)
            labels = torch.tensor([t for _, t in samples])
            return DataLoader(TensorDataset(images, labels), batch_size=options.batch_size,
                              shuffle=shuffle, drop_last=shuffle)

        return loader(data.train_samples, True), loader(data.val_samples, False), data

    def describe(self, data: RunData) -> str:
        return f"toy source: {data.num_train} random images"


@pytest.fixture
def toy_source():
    sources.register_source(ToySource)
    yield ToySource
    sources.unregister_source(ToySource)


def test_a_registered_source_trains_a_run(toy_source, tmp_path, caplog):
    from vit.training.trainer import train

    cfg = load_config(None, [
        "data.root=toy:20", f"train.output={tmp_path / 'run'}", "train.device=cpu",
        "data.workers=0", "train.batch_size=8", "train.epochs=1", "train.explain_samples=0",
        "model.name=vit_nano_patch4_32", "model.img_size=16", "model.embed_dim=32",
        "model.depth=2", "model.num_heads=2"])
    with caplog.at_level("INFO"):
        summary = train(cfg, show_progress=False)
    assert summary.epochs_done == 1 and (summary.run_dir / "best.pt").is_file()
    assert (summary.run_dir / "split.json").read_text().count('"toy"') == 1
    assert "toy source: 16 random images" in caplog.text


@pytest.mark.parametrize(("spec", "kind"), [
    ("data/pets", "FolderSource"),
    ("data/labels.csv", "LabelFileSource"),
    ("out/train-{000000..000003}.tar", "ShardSource"),
    ("synthetic:data/shapes", "SyntheticSource"),
])
def test_open_source_picks_the_source_a_spec_names(spec, kind):
    assert type(open_source(spec)).__name__ == kind


def test_a_registered_source_is_asked_first(toy_source):
    assert isinstance(open_source("toy:8"), toy_source)
    sources.unregister_source(toy_source)
    assert type(open_source("toy:8")).__name__ == "FolderSource"  # any other path: a folder


def test_no_data_is_one_line():
    with pytest.raises(ConfigError, match="no data folder given"):
        open_source(None)


def test_the_source_is_chosen_in_one_place():
    """No module outside vit/data sniffs --data for a label file or shards."""
    sniffers = {"is_label_file", "is_shard_spec"}
    found = []
    for path in VIT.rglob("*.py"):
        if path.is_relative_to(VIT / "data"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            name = (node.id if isinstance(node, ast.Name) else node.name.split(".")[-1]
                    if isinstance(node, ast.alias) else getattr(node, "attr", None))
            if name in sniffers:
                found.append(f"{path.relative_to(VIT)}:{node.lineno}")
    assert not found


def test_synthetic_source_writes_the_shapes_and_reads_them_as_a_folder(tmp_path, monkeypatch):
    monkeypatch.setattr("vit.data.sources.synthetic.SHAPES_PER_CLASS", 5)
    cfg = load_config(None, [f"data.root=synthetic:{tmp_path / 'shapes'}", "model.img_size=16",
                             "data.workers=1"])
    data = open_source(cfg.data.root).prepare(cfg)
    assert (tmp_path / "shapes" / "train").is_dir() and (tmp_path / "shapes" / "val").is_dir()
    assert len(data.classes) == 5 and data.split["kind"] == "folder"
    assert data.num_train == 20 and data.num_val == 5
