"""Device and precision are chosen in one place (vit.runtime), for training and inference alike."""

import platform
import sys

import pytest
import torch

from vit.errors import ConfigError
from vit.runtime import (
    autocast,
    inference_precision,
    keep_freed_memory,
    make_grad_scaler,
    resolve_device,
    resolve_precision,
)

CPU = torch.device("cpu")


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="glibc only")
def test_keep_freed_memory_takes_effect_on_glibc():
    assert keep_freed_memory() is True


def test_cpu_choices():
    assert resolve_device("cpu") == CPU
    assert resolve_precision("auto", CPU) == "fp32"
    assert resolve_precision("bf16", CPU) == "bf16"
    assert inference_precision(CPU) == "fp32"
    assert make_grad_scaler(CPU, "fp32") is None and make_grad_scaler(CPU, "bf16") is None


@pytest.mark.parametrize("name,words", [("tpu", "--device must be"),
                                        ("cuda:7", "no CUDA GPU")])
def test_bad_devices(name, words):
    if name.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(ConfigError, match=words):
        resolve_device(name)


def test_bad_precisions():
    with pytest.raises(ConfigError, match="must be one of"):
        resolve_precision("fp8", CPU)
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16", CPU)


def test_autocast_is_off_for_fp32_and_on_for_bf16():
    layer = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with autocast(CPU, "fp32"):
        assert layer(x).dtype == torch.float32
    with autocast(CPU, "bf16"):
        assert layer(x).dtype == torch.bfloat16
