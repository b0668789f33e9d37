"""The saliency methods are listed once, in ``vit.explain.catalog``: a method added there (and
nowhere else) is one of ``saliency()``'s, has its label on the explorer page and its name in the
help of `vit explain` and `vit explain-bench`."""

from __future__ import annotations

import inspect

from helpers.processes import fresh_python

from vit.explain.catalog import CATALOG, DEFAULT_METHOD

# A fresh interpreter adds a method to the catalog, before anything reads it, and nowhere else.
ADD_ONE_METHOD = '''
import sys, types
import torch
from vit.explain import catalog

fake = types.ModuleType("vit.explain._fake_method")
def fake_map(model, images, *, target=None, scale=1.0):
    return torch.full((images.shape[0], 2, 2), float(target) * scale)
fake.fake_map = fake_map
sys.modules[fake.__name__] = fake
catalog.CATALOG = (*catalog.CATALOG, catalog.Method(
    "fake-map", "a fake map (Nobody 2099)", "a constant: the target", True, "_fake_method:fake_map"))

from vit.explain.saliency import CLASS_SPECIFIC, METHODS, saliency
from vit.explain.explorer import page_methods
from vit.cli.main import build_parser

assert METHODS[-1] == "fake-map" and "fake-map" in CLASS_SPECIFIC, METHODS
maps = saliency(torch.nn.Identity(), torch.zeros(2, 3, 8, 8), "fake-map", target=3, scale=2.0)
assert maps.shape == (2, 2, 2) and bool((maps == 6).all()), maps
assert page_methods()[-1] == ("fake-map", "a fake map (Nobody 2099)"), page_methods()
assert page_methods("fake-map")[0][0] == "fake-map"
sub = next(a for a in build_parser()._actions if a.dest == "command")
explain_help = " ".join(sub.choices["explain"].format_help().split())
bench_help = " ".join(sub.choices["explain-bench"].format_help().split())
print(explain_help)
print(bench_help)
'''


def test_a_method_added_to_the_catalog_alone_is_everywhere():
    explain_help, bench_help = fresh_python(ADD_ONE_METHOD, timeout=300).splitlines()[-2:]
    assert "attnlrp, gradcam or fake-map; a comma-separated list" in explain_help, explain_help
    assert "from rollout, grad-rollout, attention, legrad, attnlrp, gradcam, fake-map, random, " \
           "occlusion (default: all; only a run of all seven saliency methods" in bench_help, \
           bench_help


def test_the_catalog_is_what_saliency_runs():
    from vit.explain.explorer import page_methods
    from vit.explain.saliency import _REGISTRY, CLASS_SPECIFIC, METHODS

    assert METHODS == tuple(m.name for m in CATALOG) and DEFAULT_METHOD in METHODS
    assert [key for key, _ in page_methods()] == list(METHODS)
    for method in CATALOG:
        function = _REGISTRY[method.name]
        module, name = method.function.split(":")
        assert (function.__module__, function.__name__) == (f"vit.explain.{module}", name)
        takes_target = "target" in inspect.signature(function).parameters
        assert takes_target == method.class_specific == (method.name in CLASS_SPECIFIC), method


def test_the_command_line_names_the_catalog_without_torch():
    code = ("import sys; from vit.cli.main import build_parser; "
            "sub = next(a for a in build_parser()._actions if a.dest == 'command'); "
            "[sub.choices[c].format_help() for c in ('explain', 'explain-bench')]; "
            "assert 'vit.explain.catalog' in sys.modules; "
            "assert 'torch' not in sys.modules, 'the help imported torch'")
    fresh_python(code)
