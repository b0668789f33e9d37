"""train.report_to: one tiny run logs to TensorBoard, W&B (offline) and MLflow (a file: store),
and each test reads back, with that tool's own reader, what was written. A tool whose package
is missing skips its test and says so."""

from __future__ import annotations

import glob
import importlib.util
import json
import struct
from pathlib import Path

import pytest
from helpers.images import make_folder
from helpers.processes import fresh_python
from helpers.training import tiny_config

from vit.cli import main
from vit.errors import ConfigError
from vit.training.trainer import train

INSTALLED = [n for n in ("tensorboard", "wandb", "mlflow") if importlib.util.find_spec(n)]
STEPS = 6  # 27 training images, batch 8 (drop_last): 3 steps per epoch, 2 epochs
IMAGES = {"curves", "confusion_matrix", "overlays/grid"}


def needs(name: str):
    return pytest.mark.skipif(name not in INSTALLED, reason=f"{name} is not installed "
                              f"(pip install -e \".[{name}]\"; the dev extra has it)")


@pytest.fixture(scope="module")
def tracked(tmp_path_factory) -> dict:
    """One 2-epoch run reporting to every installed tracker, everything inside a temp folder."""
    if not INSTALLED:
        pytest.skip("none of tensorboard, wandb, mlflow is installed")
    tmp = tmp_path_factory.mktemp("trackers")
    data = make_folder(tmp / "data")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true",
                           "WANDB_DIR": tmp / "wandb_home", "WANDB_CONFIG_DIR": tmp / "wandb_cfg",
                           "WANDB_CACHE_DIR": tmp / "wandb_cache",
                           "WANDB_DATA_DIR": tmp / "wandb_data",
                           "MLFLOW_TRACKING_URI": (tmp / "mlruns").as_uri(),
                           "MLFLOW_ALLOW_FILE_STORE": "true"}.items():
            mp.setenv(key, str(value))
        summary = train(tiny_config(data, tmp / "run", f"train.report_to={INSTALLED}",
                                    "train.explain_samples=2"), show_progress=False)
    metrics = [json.loads(x) for x in (summary.run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"run": summary.run_dir, "metrics": metrics, "mlruns": tmp / "mlruns",
            "best": summary.best_top1}


@needs("tensorboard")
def test_tensorboard_event_files_hold_steps_epochs_config_and_images(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tracked["run"] / "tensorboard"),
                              size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, STEPS + 1))
    assert {"train/lr", "train/images_per_s"} <= set(tags["scalars"])
    for key in ("val_top1", "val_loss", "train_loss", "lr", "images_per_s", "elapsed_s"):
        got = [(e.step, e.value) for e in events.Scalars(f"epoch/{key}")]
        assert got == [(m["epoch"], pytest.approx(m[key], rel=1e-6)) for m in tracked["metrics"]]
    assert IMAGES <= set(tags["images"])
    assert any(t.startswith("overlays/") and t.endswith("_attnlrp") for t in tags["images"])
    config = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "train.lr: 0.003" in config and "model.depth: 2" in config


def wandb_records(run_dir: Path) -> list:
    """Every record of the offline run's .wandb file: a LevelDB-style log (32 KiB blocks of
    checksum, length, type and data) of wandb's own protobuf records, after a 7-byte header."""
    from wandb.proto import wandb_internal_pb2

    (path,) = glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb"))
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending, records = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's trailer: padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL, LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def key(item) -> str:
    """A history or summary item's top-level key (wandb 0.2x+ fills nested_key instead)."""
    return item.key or item.nested_key[0]


@needs("wandb")
def test_wandb_offline_run_holds_steps_epochs_config_and_images(tracked):
    records = wandb_records(tracked["run"])
    rows = [{key(item): json.loads(item.value_json) for item in r.history.item}
            for r in records if r.WhichOneof("record_type") == "history"]
    steps = [r for r in rows if "train/loss" in r]
    assert [r["train/step"] for r in steps] == list(range(1, STEPS + 1))
    epochs = [r for r in rows if "epoch/val_top1" in r]
    assert [(r["epoch"], r["epoch/val_top1"]) for r in epochs] == [
        (m["epoch"], pytest.approx(m["val_top1"])) for m in tracked["metrics"]]
    logged = {k.removeprefix("images/") for r in rows for k in r if k.startswith("images/")}
    assert IMAGES <= logged
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["train"]["lr"] == 0.003 and config["model"]["depth"] == 2
    summary = {key(i): json.loads(i.value_json) for r in records
               if r.WhichOneof("record_type") == "summary" for i in r.summary.update}
    assert summary["best_val_top1"] == pytest.approx(tracked["best"])


@needs("mlflow")
def test_mlflow_file_store_holds_steps_epochs_params_and_images(tracked):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracked["mlruns"].as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("vit").experiment_id])
    assert run.data.params["train.lr"] == "0.003" and run.data.params["model.depth"] == "2"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(1, STEPS + 1))
    top1 = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id,
                                                                         "epoch/val_top1"))
    assert top1 == [(m["epoch"], pytest.approx(m["val_top1"])) for m in tracked["metrics"]]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "images")}
    artifacts |= {a.path for a in client.list_artifacts(run.info.run_id, "images/overlays")}
    assert {"images/curves.png", "images/confusion_matrix.png",
            "images/overlays/grid.png"} <= artifacts
    assert run.data.metrics["final/best_val_top1"] == pytest.approx(tracked["best"])


def test_a_missing_extra_is_one_line_naming_the_install_command(tmp_path, monkeypatch, capsys):
    import vit.training.trackers as trackers

    real = importlib.util.find_spec
    monkeypatch.setattr(trackers.importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[wandb\]"'):
        trackers.check_trackers(["tensorboard", "wandb"])
    with pytest.raises(ConfigError, match="unknown tracker 'neptune'"):
        trackers.check_trackers(["neptune"])
    data = make_folder(tmp_path / "data", per_class=2)
    assert main(["train", "--data", str(data), "--output", str(tmp_path / "run"),
                 "train.report_to=[wandb]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ['error: train.report_to=wandb needs the wandb package: pip install -e '
                   '".[wandb]" (or pip install "vit[wandb]")']
    assert not (tmp_path / "run" / "last.pt").exists()


def test_trackers_are_imported_only_when_asked_for():
    code = ("import sys, vit.training.trainer, vit.cli.train; "
            "print(sorted(m for m in ('wandb', 'mlflow', 'tensorboard', "
            "'torch.utils.tensorboard') if m in sys.modules))")
    out = fresh_python(code)
    assert out.strip() == "[]"


def test_report_to_takes_a_list_or_names():
    from vit.config import load_config

    for text, expected in (("[tensorboard,wandb]", ["tensorboard", "wandb"]),
                           ("mlflow", ["mlflow"]), ("wandb,mlflow", ["wandb", "mlflow"]),
                           ("[]", [])):
        assert load_config(None, [f"train.report_to={text}"]).train.report_to == expected
    assert load_config(None).train.report_to == []  # none by default
