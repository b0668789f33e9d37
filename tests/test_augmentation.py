"""One augmentation recipe (vit/data/augmentation.py), two pipelines generated from it.

Each op of the RandAugment table runs alone in both pipelines, many times on one photo; the
outputs' statistics must have the same distributions (two-sample KS test). A builder that reads
its range wrongly (another axis, another scale, the wrong sign convention of a parameter) fails.
The pixel-level equality of each op with albumentations' own functions is in test_fastdata.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.stats import ks_statistic, ks_threshold

from vit.data import memory, transforms
from vit.data.augmentation import RANDAUGMENT, AugmentRecipe, check_augment_args, fill_value
from vit.errors import ConfigError

MEAN, STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]
PARAMETRISED = [op.name for op in RANDAUGMENT if op.limit is not None]


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """24x24, brighter to the right and to the bottom, more red at the top-left: every op of
    the table changes at least one of the statistics below."""
    rng = np.random.default_rng(2)
    ramp = np.linspace(30, 200, 24)
    image = ramp[None, :, None] + 0.5 * ramp[:, None, None] - 40
    image = image + rng.integers(-25, 25, (24, 24, 3))
    image[:8, :8, 0] += 60
    return np.clip(image, 0, 255).astype(np.uint8)


def statistics(out: np.ndarray, image: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image numbers of (N, 24, 24, 3) outputs, in grey levels."""
    out = out.astype(np.float64)
    return {
        "mean": out.mean(axis=(1, 2, 3)),
        "change": np.abs(out - image.astype(np.float64)).mean(axis=(1, 2, 3)),
        "left-right": out[:, :, :12].mean(axis=(1, 2, 3)) - out[:, :, 12:].mean(axis=(1, 2, 3)),
        "top-bottom": out[:, :12].mean(axis=(1, 2, 3)) - out[:, 12:].mean(axis=(1, 2, 3)),
        "red corner": out[:, :8, :8, 0].mean(axis=(1, 2)) - out[:, :8, :8, 1].mean(axis=(1, 2)),
    }


def tensor_op_outputs(name: str, image: np.ndarray, n: int, magnitude: float) -> np.ndarray:
    k = [op.name for op in RANDAUGMENT].index(name)
    strength = 2 * torch.rand((n, len(RANDAUGMENT)), generator=torch.Generator().manual_seed(0)) - 1
    values = memory.op_values(strength, magnitude)[:, k]
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float().repeat(n, 1, 1, 1)
    out = memory._TENSOR_OPS[name](x, values, torch.tensor(fill_value(MEAN)))
    return out.permute(0, 2, 3, 1).numpy()


def albumentations_op_outputs(name: str, image: np.ndarray, n: int, magnitude: float) -> np.ndarray:
    k = [op.name for op in RANDAUGMENT].index(name)
    op = transforms.randaugment_ops(magnitude, fill_value(MEAN))[k]
    op.set_random_seed(0)
    return np.stack([op(image=image)["image"] for _ in range(n)])


def test_every_op_of_the_table_has_one_builder_in_each_pipeline():
    names = [op.name for op in RANDAUGMENT]
    assert len(set(names)) == len(names) == memory.NUM_RANDAUG_OPS
    assert list(memory._TENSOR_OPS) == names
    assert list(transforms._ALBUMENTATIONS_OPS) == names
    assert len(transforms.randaugment_ops(9, fill_value(MEAN))) == len(names)


@pytest.mark.parametrize("magnitude", [9, 4])
@pytest.mark.parametrize("name", PARAMETRISED)
def test_each_op_has_the_same_effect_in_both_pipelines(photo, name, magnitude):
    n = 400
    ours = statistics(tensor_op_outputs(name, photo, n, magnitude), photo)
    theirs = statistics(albumentations_op_outputs(name, photo, n, magnitude), photo)
    limit = ks_threshold(n, n)
    for stat in ours:
        d = ks_statistic(ours[stat], theirs[stat])
        assert d < limit, f"{name} at magnitude {magnitude}, {stat}: KS {d:.3f} >= {limit:.3f}"


def test_the_op_comparison_tells_ops_apart(photo):
    """The check above is not blind: translating along y is not translating along x, and a
    stronger rotation is not the table's rotation."""
    n = 400
    x_shift = statistics(tensor_op_outputs("translate_x", photo, n, 9), photo)
    y_shift = statistics(albumentations_op_outputs("translate_y", photo, n, 9), photo)
    assert ks_statistic(x_shift["left-right"], y_shift["left-right"]) > ks_threshold(n, n)
    weak = statistics(tensor_op_outputs("rotate", photo, n, 4), photo)
    strong = statistics(albumentations_op_outputs("rotate", photo, n, 9), photo)
    assert ks_statistic(weak["change"], strong["change"]) > ks_threshold(n, n)


@pytest.mark.parametrize("magnitude", [9, 5, 0])
def test_op_values_cover_each_range_of_the_table(magnitude):
    strength = 2 * torch.rand((20000, len(RANDAUGMENT)), generator=torch.Generator().manual_seed(1)) - 1
    values = memory.op_values(strength, magnitude)
    for k, op in enumerate(RANDAUGMENT):
        if op.limit is None:
            continue
        low, high = op.range(magnitude)
        column = values[:, k].double()
        assert column.min() >= low - 1e-6 and column.max() <= high + 1e-6, op.name
        if op.integer:
            assert sorted(set(column.tolist())) == [float(v) for v in range(int(low), int(high) + 1)]
        else:  # uniform: the mean in the middle, the ends reached
            width = high - low
            assert abs(column.mean().item() - (low + high) / 2) <= 0.01 * width + 1e-9, op.name
            assert column.min() <= low + 0.01 * width and column.max() >= high - 0.01 * width


def test_the_table_ranges_at_strength_9():
    ranges = {op.name: op.range(9) for op in RANDAUGMENT}
    assert ranges["rotate"] == pytest.approx((-27.0, 27.0))
    assert ranges["sharpen"] == pytest.approx((0.0, 0.81))
    assert ranges["posterize"] == (4.0, 8.0)
    assert ranges["solarize"] == pytest.approx((0.1, 1.0))
    assert RANDAUGMENT[-1].range(9) == (0.0, 0.0)


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(scale=(0.5, 0.2)), "scale"),
    (dict(ratio=(2.0, 1.0)), "ratio"),
    (dict(hflip=1.5), "hflip"),
    (dict(randaug_n=14), "randaug_n"),
    (dict(randaug_m=11), "randaug_m"),
])
def test_a_bad_recipe_is_refused_before_either_pipeline_sees_it(kwargs, match):
    recipe = dict(scale=(0.08, 1.0), ratio=(0.75, 4 / 3), hflip=0.5, randaug_n=2, randaug_m=9)
    recipe.update(kwargs)
    with pytest.raises(ConfigError, match=match):
        check_augment_args(**recipe)
    with pytest.raises(ConfigError, match=match):  # what both pipelines take
        AugmentRecipe(**recipe)
