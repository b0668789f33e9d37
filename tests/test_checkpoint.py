"""Checkpoints: atomic writes, weights_only-safe loading, clear errors, exact resume, safetensors."""

import copy
import json
import os
import random

import numpy as np
import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from helpers.models import tiny_vit
from torch import nn

import vit
from vit.config import Config, to_dict
from vit.errors import CheckpointError
from vit.inference.export import export_safetensors
from vit.io import atomic_save
from vit.models import checkpoint as ckpt_lib
from vit.models.checkpoint import (
    FORMAT_VERSION,
    TrainingState,
    load_checkpoint,
    make_checkpoint,
    model_from_checkpoint,
)
from vit.runtime import unwrap_model
from vit.training.optim import build_optimizer
from vit.training.resume import capture_rng_state, find_resume_checkpoint, restore_rng_state

CLASSES = ["cat", "dog", "fox"]
PREPROCESS = {"img_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "crop_pct": 1.0}


def checkpoint_of(model: nn.Module, **kwargs) -> dict:
    args = dict(model=model, classes=CLASSES, preprocess=PREPROCESS, config=to_dict(Config()),
                epoch=1, step=10, best_top1=50.0, metrics={"val_top1": 50.0})
    return make_checkpoint(**{**args, **kwargs})


def files_in(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


class Wrapper(nn.Module):
    """Same attribute and state_dict prefix as DistributedDataParallel (``module``) or
    torch.compile (``_orig_mod``)."""

    def __init__(self, inner: nn.Module, attr: str):
        super().__init__()
        setattr(self, attr, inner)


# --- make_checkpoint and weights_only ---------------------------------------------------------


def _full_checkpoint(tmp_path):
    """A resumable checkpoint with everything in it, as training writes last.pt."""
    model = tiny_vit(jitter=0.05, train=True)
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    F.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([0, 2])).backward()
    optimizer.step()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ema = copy.deepcopy(model)
    metrics = {"val_top1": np.float64(66.5), "val_loss": torch.tensor(0.25), "lr": 1e-3}
    training = TrainingState(optimizer=optimizer, scaler=scaler, ema_model=ema, train_model=model,
                             extra={"batches_done": 3, "rng": capture_rng_state()})
    ckpt = checkpoint_of(ema, metrics=metrics, training=training)
    path = tmp_path / "last.pt"
    atomic_save(ckpt, path)
    return path, model, optimizer


def test_full_checkpoint_loads_with_weights_only(tmp_path):
    path, model, optimizer = _full_checkpoint(tmp_path)
    raw = torch.load(path, weights_only=True)  # nothing but tensors and plain data inside

    assert raw["format"] == "vit-checkpoint" and raw["format_version"] == FORMAT_VERSION
    assert raw["vit_version"] == vit.__version__
    assert raw["classes"] == CLASSES and raw["preprocess"] == PREPROCESS
    assert raw["model_config"]["embed_dim"] == 32 and raw["config"]["train"]["lr"] == 1e-3
    assert raw["metrics"] == {"val_top1": 66.5, "val_loss": 0.25, "lr": 1e-3}
    assert type(raw["metrics"]["val_top1"]) is float  # numpy / tensor scalars made plain
    assert raw["scaler"]["scale"] == 1024.0
    assert raw["extra"]["batches_done"] == 3
    for name, p in model.state_dict().items():
        assert torch.equal(raw["train_model"][name], p)
    state = optimizer.state_dict()
    assert raw["optimizer"]["param_groups"] == state["param_groups"]
    for i, s in state["state"].items():
        assert torch.equal(raw["optimizer"]["state"][i]["exp_avg"], s["exp_avg"])
    restore_rng_state(raw["extra"]["rng"])  # loads and applies


def test_checkpoint_without_resume_state_has_no_resume_keys():
    ckpt = checkpoint_of(tiny_vit(jitter=0.05, train=True))
    assert not {"optimizer", "scaler", "ema", "train_model", "extra"} & set(ckpt)


def test_wrapped_model_keys_are_plain():
    model = tiny_vit(jitter=0.05, train=True)
    plain_keys = list(model.state_dict())
    for wrapped in (Wrapper(model, "module"), Wrapper(model, "_orig_mod"),
                    Wrapper(Wrapper(model, "_orig_mod"), "module")):
        assert unwrap_model(wrapped) is model
        assert any(k.startswith(("module.", "_orig_mod.")) for k in wrapped.state_dict())
        ckpt = checkpoint_of(wrapped, training=TrainingState(ema_model=wrapped))
        assert list(ckpt["model"]) == plain_keys
        assert list(ckpt["ema"]) == plain_keys


@pytest.mark.slow
def test_real_torch_compile_and_ddp_prefixes_stripped(tmp_path):
    import torch.distributed as dist

    model = tiny_vit(jitter=0.05, train=True)
    compiled = torch.compile(model)  # wraps lazily; nothing is compiled until it is called
    assert list(checkpoint_of(compiled)["model"]) == list(model.state_dict())
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(model)
        assert list(ddp.state_dict())[0].startswith("module.")
        assert list(checkpoint_of(ddp)["model"]) == list(model.state_dict())
    finally:
        dist.destroy_process_group()


def test_config_dataclass_is_stored_as_plain_data(tmp_path):
    atomic_save(checkpoint_of(tiny_vit(jitter=0.05, train=True), config=Config()), tmp_path / "best.pt")
    config = torch.load(tmp_path / "best.pt", weights_only=True)["config"]
    assert config == to_dict(Config())


def test_make_checkpoint_rejects_incomplete_preprocess():
    with pytest.raises(ValueError, match="crop_pct"):
        checkpoint_of(tiny_vit(jitter=0.05, train=True), preprocess={"img_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3})


# --- load_checkpoint: round trip and errors ---------------------------------------------------


def test_load_checkpoint_round_trip_and_identical_logits(tmp_path):
    model = tiny_vit(jitter=0.05, train=True).eval()
    atomic_save(checkpoint_of(model), tmp_path / "best.pt")
    ckpt = load_checkpoint(tmp_path / "best.pt")
    for name, p in model.state_dict().items():
        assert torch.equal(ckpt["model"][name], p)
    rebuilt = model_from_checkpoint(ckpt)
    assert not rebuilt.training
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(rebuilt(x), model(x))


def test_model_from_checkpoint_names_mismatched_parameter():
    ckpt = checkpoint_of(tiny_vit(jitter=0.05, train=True))
    ckpt["model_config"] = {**ckpt["model_config"], "num_classes": 4}
    with pytest.raises(CheckpointError, match=r"head\.weight has shape \(3, 32\) in the checkpoint "
                                              r"but \(4, 32\) in the model"):
        model_from_checkpoint(ckpt)
    ckpt = checkpoint_of(tiny_vit(jitter=0.05, train=True))
    del ckpt["model"]["blocks.1.mlp.fc2.bias"]
    with pytest.raises(CheckpointError, match="missing.*blocks.1.mlp.fc2.bias"):
        model_from_checkpoint(ckpt)


class _CreatesFile:
    """A pickle that, when loaded unsafely, creates a file (via builtins.open or os.system)."""

    def __init__(self, target, how):
        self.target, self.how = str(target), how

    def __reduce__(self):
        if self.how == "open":
            return (open, (self.target, "w"))
        return (os.system, (f"touch {self.target}",))


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("how", ["open", "system"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, how, zipped):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": "vit-checkpoint", "model": {}, "payload": _CreatesFile(target, how)},
               path, _use_new_zipfile_serialization=zipped)

    with pytest.raises(CheckpointError, match="arbitrary Python objects.*refused for safety"):
        load_checkpoint(path)
    assert not target.exists()

    # The payload is real: an unsafe load would have run it.
    torch.load(path, weights_only=False)
    assert target.exists()


def _write(tmp_path, name, obj=None, text=None):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    else:
        torch.save(obj, path)
    return path


@pytest.mark.parametrize("make,words", [
    (lambda d: d / "missing.pt", ["does not exist"]),
    (lambda d: _write(d, "notes.txt", text="epoch 1: loss 0.3\n"), ["not a vit checkpoint",
                                                                     "text file"]),
    # "c" is pickle's GLOBAL opcode: still a text file, not "arbitrary Python objects"
    (lambda d: _write(d, "classes.txt", text="cat\ndog\n"), ["not a vit checkpoint", "text file"]),
    (lambda d: _write(d, "empty.pt", text=""), ["not a vit checkpoint", "empty"]),
    (lambda d: _write(d, "sd.pt", {"head.weight": torch.zeros(3, 2)}),
     ["plain state_dict", "--pretrained"]),
    (lambda d: _write(d, "other.pt", {"epoch": 3, "net": {"w": torch.zeros(1)}}),
     ["not a vit checkpoint", "without weights", "'epoch', 'net'"]),
    (lambda d: _write(d, "tensor.pt", torch.zeros(3)), ["not a vit checkpoint", "Tensor"]),
    (lambda d: _write(d, "future.pt", {"format": "vit-checkpoint",
                                       "format_version": FORMAT_VERSION + 1}),
     ["incompatible version", f"format_version {FORMAT_VERSION + 1}", "upgrade"]),
    (lambda d: _write(d, "partial.pt", {"format": "vit-checkpoint", "format_version": 1}),
     ["incomplete", "model_config"]),
])
def test_load_checkpoint_errors(tmp_path, make, words):
    path = make(tmp_path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_load_checkpoint_truncated_file(tmp_path):
    path = tmp_path / "last.pt"
    atomic_save(checkpoint_of(tiny_vit(jitter=0.05, train=True)), path)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_checkpoint(path)


def test_load_checkpoint_on_a_run_folder_names_the_files_inside(tmp_path):
    for name in ("best.pt", "last.pt"):
        atomic_save({"a": 1}, tmp_path / name)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path)
    message = str(info.value)
    assert "is a folder" in message and str(tmp_path / "best.pt") in message
    assert "best.pt, last.pt" in message


# --- safetensors ------------------------------------------------------------------------------


def test_export_safetensors_round_trip(tmp_path):
    model = tiny_vit(jitter=0.05, train=True).eval()
    ckpt = checkpoint_of(model, metrics={"val_top1": 50.0, "per_class": {"cat": 1.0}})
    weights_path, sidecar = export_safetensors(ckpt, tmp_path / "model.safetensors")
    assert (weights_path, sidecar) == (tmp_path / "model.safetensors", tmp_path / "model.json")
    assert files_in(tmp_path) == ["model.json", "model.safetensors"]

    reference = safetensors.torch.load_file(weights_path)  # the library's own reader
    assert reference.keys() == model.state_dict().keys()
    for name, p in model.state_dict().items():
        assert torch.equal(reference[name], p)
    info = json.loads(sidecar.read_text())
    assert info["classes"] == CLASSES and info["preprocess"] == PREPROCESS
    assert info["model_config"] == ckpt["model_config"]
    assert info["metrics"] == {"val_top1": 50.0}  # the scalar summary only
    assert (info["format"], info["format_version"], info["epoch"]) == ("vit-checkpoint", 1, 1)

    loaded = load_checkpoint(weights_path)
    assert loaded["classes"] == CLASSES and loaded["best_top1"] == 50.0
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model_from_checkpoint(loaded)(x), model(x))

    sidecar.unlink()  # the file alone still works: the same JSON sits in its metadata
    assert load_checkpoint(weights_path)["classes"] == CLASSES


def test_safetensors_errors(tmp_path):
    ckpt = checkpoint_of(tiny_vit(jitter=0.05, train=True))
    with pytest.raises(CheckpointError, match="must end in .safetensors"):
        export_safetensors(ckpt, tmp_path / "model.pt")
    bare = tmp_path / "bare.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(2)}, bare)
    with pytest.raises(CheckpointError, match="no sidecar bare.json.*--pretrained"):
        load_checkpoint(bare)
    junk = tmp_path / "junk.safetensors"
    junk.write_text("not safetensors")
    with pytest.raises(CheckpointError, match="not a readable .safetensors"):
        load_checkpoint(junk)


# --- RNG and exact resume ---------------------------------------------------------------------


def _draw() -> list:
    return [random.random(), random.gauss(0, 1), np.random.rand(3).tolist(),
            np.random.randn(), torch.rand(3).tolist(), torch.randn(2).tolist()]


def test_rng_round_trip_is_exact(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    _draw()  # leaves cached Gaussians half used in python and numpy
    state = capture_rng_state()
    first = _draw()
    atomic_save({"rng": state}, tmp_path / "rng.pt")  # through a weights_only file, too
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    assert _draw() == first
    restore_rng_state(state)
    assert _draw() == first


def _train_steps(model, optimizer, n: int) -> None:
    for _ in range(n):
        x = torch.randn(4, 3, 32, 32)  # drawn from the global generator, like augmentation
        loss = F.cross_entropy(model(x), torch.randint(0, 3, (4,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_resume_continues_exactly(tmp_path):
    """2 steps, save, 2 more == 2 steps, save, load into a fresh model and optimizer, 2 more."""
    model = tiny_vit(jitter=0.05, train=True, drop_path_rate=0.1, drop_rate=0.1).train()  # randomness inside the model too
    optimizer = build_optimizer(model, lr=1e-2, weight_decay=0.05, layer_decay=0.75)
    _train_steps(model, optimizer, 2)
    training = TrainingState(optimizer=optimizer, train_model=model,
                             extra={"rng": capture_rng_state()})
    atomic_save(checkpoint_of(model, training=training), tmp_path / "last.pt")
    _train_steps(model, optimizer, 2)

    state = load_checkpoint(find_resume_checkpoint(tmp_path))
    fresh = tiny_vit(99, jitter=0.05, train=True, drop_path_rate=0.1, drop_rate=0.1).train()
    fresh_optimizer = build_optimizer(fresh, lr=1e-2, weight_decay=0.05, layer_decay=0.75)
    fresh.load_state_dict(state["train_model"])
    fresh_optimizer.load_state_dict(state["optimizer"])
    restore_rng_state(state["extra"]["rng"])
    _train_steps(fresh, fresh_optimizer, 2)

    for name, p in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], p), name


def test_find_resume_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="holds no last.pt"):
        find_resume_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        find_resume_checkpoint(tmp_path / "nope")
    atomic_save({"a": 1}, tmp_path / "last.pt")
    atomic_save({"a": 1}, tmp_path / "epoch3.pt")
    assert find_resume_checkpoint(tmp_path) == tmp_path / "last.pt"
    assert find_resume_checkpoint(str(tmp_path / "epoch3.pt")) == tmp_path / "epoch3.pt"


def test_module_exports():
    for name in ckpt_lib.__all__:
        assert hasattr(ckpt_lib, name)
