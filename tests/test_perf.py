"""The allocator setting `vit train` applies takes effect where it should (glibc on Linux)."""

import platform
import sys

import pytest

from vit.perf import keep_freed_memory


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="glibc only")
def test_keep_freed_memory_takes_effect_on_glibc():
    assert keep_freed_memory() is True
