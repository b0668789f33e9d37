"""Does the code here behave as an older commit's did? (issue 26 item 9: behaviour unchanged)

    python benchmarks/same_behaviour.py --against dc04572

Unpacks the older commit (``git archive``) into a temporary folder. Then, once with that tree and
once with this one, each in its own process on the CPU, it trains the same tiny run (3 epochs,
both input pipelines), keeps its ``metrics.jsonl`` and weights, and computes the six saliency
maps of fixed images from its ``best.pt``; this tree also explains the older run's ``best.pt``
(an old checkpoint loads and gives the same maps). It prints one line per comparison and exits
1 if anything differs (timings in ``metrics.jsonl`` aside). Everything is written inside the
temporary folder, removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("rollout", "grad-rollout", "attention", "legrad", "attnlrp", "gradcam")
TIMINGS = {"images_per_s", "seconds", "data_wait_pct", "elapsed_s"}


def _write_images(data: Path) -> None:
    """3 classes x 24 images, 24 px: dark noise with a bright square in the class's channel."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(3):
        (data / f"c{c}").mkdir(parents=True, exist_ok=True)
        for i in range(24):
            a = rng.integers(0, 60, (24, 24, 3), dtype=np.uint8)
            y, x = rng.integers(0, 12, 2)
            a[y:y + 10, x:x + 10, c] = 230
            Image.fromarray(a).save(data / f"c{c}" / f"{i}.png")


def worker(out: Path, data: Path, pipeline: str, other_checkpoint: str | None) -> None:
    """Run with the tree under test on ``sys.path``: train on ``data``, then save metrics,
    weights, maps."""
    import shutil

    import torch

    from vit.config import load_config
    from vit.explain import saliency
    from vit.models.checkpoint import load_checkpoint, model_from_checkpoint
    from vit.training.trainer import train

    cfg = load_config(None, [
        f"data.root={data}", f"train.output={out / 'run'}", "train.device=cpu",
        "data.workers=0", f"data.pipeline={pipeline}", "train.batch_size=8", "train.epochs=3",
        "train.lr=3e-3", "train.warmup_epochs=0.5", "data.randaug_n=1", "data.val_fraction=0.25",
        "train.explain_samples=0", "model.name=vit_nano_patch4_32", "model.img_size=16",
        "model.embed_dim=32", "model.depth=2", "model.num_heads=2", "model.drop_path_rate=0.0"])
    train(cfg, show_progress=False)
    best = out / "run" / "best.pt"
    shutil.copy(out / "run" / "metrics.jsonl", out / "metrics.jsonl")
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))

    def maps_of(path: Path) -> dict[str, torch.Tensor]:
        model = model_from_checkpoint(load_checkpoint(path)).eval()
        return {m: saliency(model, images, m) for m in METHODS}

    torch.save(load_checkpoint(best)["model"], out / "weights.pt")
    torch.save(maps_of(best), out / "maps.pt")
    if other_checkpoint:
        torch.save(maps_of(Path(other_checkpoint)), out / "other_maps.pt")


def _run(tree: Path, out: Path, data: Path, pipeline: str, other: Path | None) -> None:
    cmd = [sys.executable, __file__, "--worker", str(out), str(data), pipeline, str(other or "")]
    env = {**os.environ, "PYTHONPATH": str(tree), "CUDA_VISIBLE_DEVICES": "",
           "VIT_CACHE_DIR": str(out.parent / f"cache_{out.name}")}  # its own, in the temp folder
    subprocess.run(cmd, env=env, check=True, cwd=out.parent, stdout=subprocess.DEVNULL)


def _metrics(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMINGS}
            for line in path.read_text().splitlines()]


def compare(old: Path, new: Path) -> list[tuple[str, bool]]:
    """(what, identical) for metrics, weights, this run's maps and the old checkpoint's maps."""
    import torch

    wa, wb = torch.load(old / "weights.pt"), torch.load(new / "weights.pt")
    lines = [("metrics.jsonl (timings aside)", _metrics(old / "metrics.jsonl") ==
              _metrics(new / "metrics.jsonl")),
             ("best.pt weights", wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k])
                                                                 for k in wa))]
    reference = torch.load(old / "maps.pt")
    for name, label in (("maps.pt", "maps of its own run"), ("other_maps.pt",
                                                             "maps of the old run's best.pt")):
        maps = torch.load(new / name)
        lines += [(f"{label}: {m}", torch.equal(reference[m], maps[m])) for m in METHODS]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", required=True, help="the older commit (any git revision)")
    parser.add_argument("--pipelines", default="albumentations,memory")
    args = parser.parse_args()
    blob = subprocess.run(["git", "-C", str(ROOT), "archive", args.against], check=True,
                          capture_output=True).stdout
    same = True
    with tempfile.TemporaryDirectory(prefix="same_behaviour_") as tmp:
        old_tree, data = Path(tmp) / "old", Path(tmp) / "data"
        _write_images(data)  # the same images for every run
        with tarfile.open(fileobj=BytesIO(blob)) as tar:
            tar.extractall(old_tree, filter="data")
        for pipeline in args.pipelines.split(","):
            old, new = Path(tmp) / f"old_{pipeline}", Path(tmp) / f"new_{pipeline}"
            _run(old_tree, old, data, pipeline, None)
            _run(ROOT, new, data, pipeline, old / "run" / "best.pt")
            for what, ok in compare(old, new):
                print(f"{pipeline:>15}  {what:<45} {'identical' if ok else 'DIFFERS'}")
                same &= ok
    print(f"against {args.against}: {'the same behaviour' if same else 'DIFFERENT behaviour'}")
    return 0 if same else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        out = Path(sys.argv[2])
        out.mkdir(parents=True)
        worker(out, Path(sys.argv[3]), sys.argv[4], sys.argv[5] or None)
    else:
        sys.exit(main())
