"""Every timm ViT-family architecture, built small, through all six explanation methods.

    python benchmarks/timm_registry.py --json benchmarks/results/timm_registry.json
    python benchmarks/timm_registry.py --names 'eva02_*,beit*'       # a part of the registry

The registry: timm's ``vit_*``, ``deit*``, ``eva*``, ``beit*``, ``flexivit*``, ``naflexvit*``
and ``samvit*`` architectures (timm 1.0.31: 280). Each is built with random weights, 2 blocks
(``depth=2``), width 64 where it accepts ``embed_dim``/``num_heads`` (else its own width), on
images of 4 x 4 patches; the weights are moved off timm's init so that no head is zero. Then
``vit.explain.saliency`` runs every method on a batch of two. An architecture is

    explained   every method returns a finite (2, grid_h, grid_w) map
    refused     the explanations say in one line (a ``ConfigError``) why they do not apply
    failed      anything else: a bug to fix (the traceback's last line is recorded)
    not built   timm itself cannot build it small (recorded, not counted)

The goal (issue 24): at least 95% of the architectures explained.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

if not __package__:  # run as `python benchmarks/timm_registry.py`: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import command_line, format_header, machine_info, write_json

FAMILY_PATTERNS = ("vit_*", "deit*", "eva*", "beit*", "flexivit*", "naflexvit*", "samvit*")
# (arguments, patches per side): width 64 where the architecture takes it; grouped-query models
# (Sapiens2) need their key/value heads for 2 blocks; a convolutional stem (MobileCLIP) a larger
# image
ATTEMPTS = tuple((width, side) for side in (4, 8) for width in (
    {"embed_dim": 64, "num_heads": 4}, {"embed_dim": 64, "num_heads": 4, "num_kv_heads": 2},
    {"embed_dim": 64, "num_heads": 2}, {}))


def registry(patterns: tuple[str, ...] = FAMILY_PATTERNS) -> list[str]:
    import timm

    return sorted({name for pattern in patterns for name in timm.list_models(pattern)})


def _patch(model: torch.nn.Module) -> tuple[int, int]:
    from vit.explain.adapters import _patch_size

    try:
        return _patch_size(model)
    except Exception:  # not a ViT the explanations know: the call below says so
        return (16, 16)


def build_small(name: str, seed: int = 0) -> tuple[torch.nn.Module, int]:
    """``name`` with 2 blocks, width 64 where it can be, on images of 4 x 4 patches (8 x 8
    where its stem needs more); the model and its patches per side."""
    import timm

    with torch.device("meta"):
        probe = timm.create_model(name, pretrained=False)
    ph, pw = _patch(probe)
    error: Exception | None = None
    for width, side in ATTEMPTS:
        try:
            torch.manual_seed(seed)
            model = timm.create_model(name, pretrained=False, depth=2, num_classes=3,
                                      img_size=(side * ph, side * pw), **width).eval()
            with torch.no_grad():
                model(torch.zeros(1, 3, side * ph, side * pw))
            break
        except Exception as err:  # timm raises many types for a bad combination
            error = err
    else:
        raise RuntimeError(f"timm cannot build it small: {error}") from error
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.1)
    return model, side


def explain_all(model: torch.nn.Module, side: int = 4) -> dict[str, Any]:
    """Every method on two images of ``side`` x ``side`` patches: {"status": explained |
    refused | failed, ...}."""
    from vit.errors import ConfigError
    from vit.explain import METHODS, saliency

    ph, pw = _patch(model)
    x = torch.randn(2, 3, side * ph, side * pw, generator=torch.Generator().manual_seed(1))
    for method in METHODS:
        try:
            out = saliency(model, x, method)
        except ConfigError as err:
            return {"status": "refused", "method": method, "why": str(err)}
        except Exception as err:  # recorded as a failure to fix
            return {"status": "failed", "method": method,
                    "why": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"}
        if out.shape != (2, side, side) or not torch.isfinite(out).all():
            return {"status": "failed", "method": method,
                    "why": f"map of shape {tuple(out.shape)}, finite: "
                           f"{bool(torch.isfinite(out).all())}"}
    return {"status": "explained"}


def walk(names: list[str], show_progress: bool = True, rows: list[dict[str, Any]] | None = None,
         save: Any = None) -> list[dict[str, Any]]:
    """Each of ``names`` not already in ``rows``, in turn; ``save(rows)`` after each one."""
    rows = list(rows or [])
    done = {row["name"] for row in rows}
    for name in tqdm([n for n in names if n not in done], desc="timm registry", unit="arch",
                     disable=not show_progress):
        start = time.perf_counter()
        try:
            model, side = build_small(name)
        except Exception as err:
            rows.append({"name": name, "status": "not built", "why": str(err).splitlines()[0]})
            continue
        row = {"name": name, "class": type(model).__name__, **explain_all(model, side)}
        row["seconds"] = round(time.perf_counter() - start, 2)
        rows.append(row)
        if save is not None:
            save(rows)
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    built = len(rows) - counts.get("not built", 0)
    by_class: dict[str, dict[str, int]] = {}
    for row in rows:
        if "class" in row:
            by_class.setdefault(row["class"], {}).setdefault(row["status"], 0)
            by_class[row["class"]][row["status"]] += 1
    return {"architectures": len(rows), "built": built, "counts": counts,
            "explained_share": counts.get("explained", 0) / max(built, 1), "by_class": by_class}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--names", default=",".join(FAMILY_PATTERNS),
                        help="comma-separated timm name patterns (default: the ViT families)")
    parser.add_argument("--json", type=Path, default=None,
                        help="also write the rows here (after every architecture)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the rows already in --json and walk only the others")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    patterns = tuple(p.strip() for p in args.names.split(",") if p.strip())
    names = registry(patterns)
    info = machine_info(torch.device("cpu"),
                        command_line(__file__, sys.argv[1:] if argv is None else argv))
    print(format_header(info))
    import json

    import timm

    kept = json.loads(args.json.read_text())["rows"] if args.resume and args.json is not None \
        and args.json.exists() else []

    def save(rows: list[dict[str, Any]]) -> None:
        if args.json is not None:
            write_json(args.json, {"machine": info, "timm": timm.__version__,
                                   "patterns": patterns, "summary": summary(rows), "rows": rows})

    rows = walk(names, rows=kept, save=save)
    save(rows)
    result = summary(rows)
    print(f"\n{result['architectures']} architectures, {result['built']} built small: "
          f"{result['counts']}; explained {100 * result['explained_share']:.1f}%")
    for status in ("refused", "failed", "not built"):
        for row in rows:
            if row["status"] == status:
                print(f"  {status:9s} {row['name']}: {row.get('method', '')} {row['why']}")
    if args.json is not None:
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
