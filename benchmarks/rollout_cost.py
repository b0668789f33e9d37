"""What an explanation costs, relative to the pass it explains.

    python benchmarks/rollout_cost.py --model vit_small_patch16_224 --batch 16 --repeats 5 --device cpu

Times, on one random batch, with a warm-up and then the median of ``--repeats`` rounds in which
every measurement runs once, in turn (so drifts in clock speed and load hit all of them alike).
The minimum is printed as well: on a shared machine it is the steadier estimate.

    forward            model(x), fused attention, no grad         (reference for rollout)
    forward explicit   model(x, return_attention=True), no grad   (where rollout's time goes)
    rollout math       rollout_from_attentions on that pass's attentions (the rest of it)
    attention_rollout  the explainer
    forward+backward   model(x), backward of the top logits       (reference for grad rollout)
    gradient_rollout   the explainer

The issue's goal: attention_rollout at most about 1.3x one forward pass.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from vit.explain import attention_rollout, gradient_rollout, rollout_from_attentions
from vit.models.presets import create_model, list_models

if not __package__:  # run as `python benchmarks/rollout_cost.py`: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import format_header, machine_info


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds for one call, waiting for the device to finish."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def measurements(model: torch.nn.Module, x: torch.Tensor) -> dict[str, Callable[[], object]]:
    with torch.no_grad():
        _, attentions = model(x, return_attention=True)
    grid = (x.shape[-2] // model.patch_embed.patch_size[0], x.shape[-1] // model.patch_embed.patch_size[1])

    def forward() -> None:
        with torch.no_grad():
            model(x)

    def forward_explicit() -> None:
        with torch.no_grad():
            model(x, return_attention=True)

    def forward_backward() -> None:
        model(x).max(dim=-1).values.sum().backward()
        model.zero_grad(set_to_none=True)

    return {
        "forward": forward,
        "forward explicit": forward_explicit,
        "rollout math": lambda: rollout_from_attentions(attentions, model.num_prefix_tokens, grid),
        "attention_rollout": lambda: attention_rollout(model, x),
        "forward+backward": forward_backward,
        "gradient_rollout": lambda: gradient_rollout(model, x),
    }


REFERENCE = {"forward explicit": "forward", "rollout math": "forward", "attention_rollout": "forward",
             "gradient_rollout": "forward+backward"}


def run(model_name: str, batch: int, repeats: int, warmup: int, device: torch.device,
        seed: int) -> dict[str, list[float]]:
    """Seconds of each measurement, one per repeat."""
    torch.manual_seed(seed)
    model = create_model(model_name).to(device).eval()
    torch.nn.init.normal_(model.head.weight, std=0.02)  # a zero head would give zero gradients
    size = model.config.img_size
    x = torch.randn(batch, 3, size, size, device=device)
    fns = measurements(model, x)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn, device))
    return times


def format_table(times: dict[str, list[float]], batch: int) -> str:
    """Median and minimum per measurement, and each one's ratio to its reference."""
    median = {name: statistics.median(t) for name, t in times.items()}
    best = {name: min(t) for name, t in times.items()}
    rows = [f"{'measurement':<18} {'median ms':>10} {'ms/image':>9} {'min ms':>9}  "
            f"{'ratio (median)':<28} ratio (min)"]
    for name in times:
        ref = REFERENCE.get(name)
        ratios = (f"{median[name] / median[ref]:.2f}x {ref}", f"{best[name] / best[ref]:.2f}x") \
            if ref else ("", "")
        rows.append(f"{name:<18} {median[name] * 1e3:>10.1f} {median[name] * 1e3 / batch:>9.2f} "
                    f"{best[name] * 1e3:>9.1f}  {ratios[0]:<28} {ratios[1]}")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vit_small_patch16_224", choices=list_models())
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    times = run(args.model, args.batch, args.repeats, args.warmup, device, args.seed)
    print(format_header(machine_info(device, " ".join(sys.argv))))
    print(f"model: {args.model}, batch {args.batch}, device {device}, "
          f"median of {args.repeats} after {args.warmup} warm-up\n")
    print(format_table(times, args.batch))


if __name__ == "__main__":
    main()
