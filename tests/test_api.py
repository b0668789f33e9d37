"""The Python API can be discovered from Python (issue 25): `dir(vit)` and `help(vit)` list the
public names, and `vit.explain` is one thing, the subpackage, whatever was touched first."""

from __future__ import annotations

import pydoc
import types

import pytest
import torch
from helpers.processes import fresh_python

import vit


def test_dir_lists_the_public_names_without_importing_torch():
    code = ("import sys, vit; names = dir(vit); "
            "assert 'torch' not in sys.modules, 'dir(vit) imported torch'; print(names)")
    names = eval(fresh_python(code))  # a list literal
    for name in ("Classifier", "saliency", "overlay", "create_model", "explain", "load_config"):
        assert name in names, name
    assert "import_module" not in names and "Any" not in names


def test_help_shows_every_public_name():
    text = pydoc.render_doc(vit, renderer=pydoc.plaintext)
    missing = [n for n in vit.__all__ if f"\n    {n}" not in text and f"class {n}" not in text]
    assert not missing, f"help(vit) does not show {missing}"


def test_vit_explain_is_the_subpackage_on_first_access():
    """It was the function on first access, and the subpackage once anything had loaded it (a
    fresh interpreter here; after everything is loaded: the test below)."""
    code = ("import types, vit; "
            "assert isinstance(vit.explain, types.ModuleType), type(vit.explain); "
            "assert callable(vit.explain.saliency) and callable(vit.explain.explain)")
    fresh_python(code)


def test_vit_explain_loads_on_first_use_and_keeps_its_names():
    """`import vit.explain` loads no torch (the help reads vit.explain.catalog); a name that is
    both a function and a module (saliency, overlay, ...) stays the function, whichever was
    loaded first; every other module is reached as an attribute, as when all were imported."""
    code = ("import sys, types, vit.explain, vit.explain.catalog; "
            "assert 'torch' not in sys.modules, 'import vit.explain imported torch'; "
            "import vit.figures.overlay_files, vit.explain.legrad; from vit.explain import gradcam; "
            "e = vit.explain; "
            "assert all(type(getattr(e, n)) is types.FunctionType for n in ('saliency', 'overlay', "
            "'legrad', 'gradcam', 'grad_rollout', 'attention_maps', 'occlusion')); "
            "assert e.overlay is sys.modules['vit.explain.overlay'].overlay; "
            "assert isinstance(e.adapters, types.ModuleType) and e.lrp.__name__ == 'vit.explain.lrp'; "
            "from vit.explain import *; assert callable(deletion_auc) and METHODS == e.METHODS")
    fresh_python(code)


def test_calling_vit_explain_still_works_with_a_deprecation_warning():
    from vit.models.vision_transformer import VisionTransformer, ViTConfig

    torch.manual_seed(0)
    model = VisionTransformer(ViTConfig(img_size=16, patch_size=4, embed_dim=16, depth=1,
                                        num_heads=2, num_classes=3)).eval()
    x = torch.randn(2, 3, 16, 16)
    vit.saliency, vit.Classifier  # noqa: B018 (loaded, as in a session that used them)
    assert isinstance(vit.explain, types.ModuleType)
    with pytest.warns(DeprecationWarning, match=r"vit\.explain\.explain"):
        maps = vit.explain(model, x, method="rollout")
    torch.testing.assert_close(maps, vit.saliency(model, x, "rollout"))
