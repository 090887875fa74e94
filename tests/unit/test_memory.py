"""Activations reuse freed memory without page faults once ``keep_freed_memory`` ran."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bentochain.engines.memory import keep_freed_memory

PROBE = """
import resource, sys, threading, torch
from bentochain.engines.memory import keep_freed_memory

def forward_passes(faults):
    # A model's MLP on a 243-token prefill, 9 layers a pass, on a thread as the engine runs.
    w1, w2, x = torch.randn(1664, 512), torch.randn(512, 1664), torch.randn(243, 512)
    with torch.inference_mode():
        for _ in range(6):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(9):
                y = (torch.nn.functional.silu(x @ w1.T) * (x @ w1.T)) @ w2.T + x
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

if sys.argv[1] == "keep":
    assert keep_freed_memory()
faults = []
thread = threading.Thread(target=forward_passes, args=(faults,))
thread.start()
thread.join()
print(sum(faults[3:]))
"""


def _faults(mode: str) -> int:
    """Page faults of the last three of six forward passes, in a fresh process."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, timeout=120
    )
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_warm_forward_passes_reuse_memory_without_page_faults() -> None:
    default = _faults("default")
    kept = _faults("keep")
    # By default glibc maps fresh blocks for activations and unmaps or trims them when freed,
    # so warm passes still fault (the test means something); kept, they reuse the same pages.
    assert default > 500, default
    assert kept < 64, kept


def test_it_is_safe_to_call_again() -> None:
    assert keep_freed_memory() == keep_freed_memory()
