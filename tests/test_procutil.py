"""Process-wide runtime settings (hpbroker.procutil), checked in fresh interpreters."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

PROBE = r"""
import ctypes, sys
from hpbroker.procutil import tune_runtime

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2

def mmapped_during(size):
    before = libc.mallinfo2().hblkhd
    buf = bytearray(size)
    during = libc.mallinfo2().hblkhd
    del buf
    return during - before

tuned = sys.argv[1] == "tuned"
first = mmapped_during(1 << 20)
if tuned:
    tune_runtime(32 << 20, 200)
print(first, mmapped_during(1 << 20), mmapped_during(64 << 20), sys.getswitchinterval())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_tune_runtime_serves_batch_sized_buffers_from_the_heap():
    def probe(mode):
        out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
        first, mb1, mb64, switch = out.stdout.split()
        return int(first), int(mb1), int(mb64), float(switch)

    first, mb1, mb64, switch = probe("default")
    assert first >= 1 << 20  # glibc's default: a fresh mapping for a 1 MiB buffer
    assert switch == pytest.approx(0.005)
    first, mb1, mb64, switch = probe("tuned")
    assert first >= 1 << 20 and mb1 == 0  # from the heap once tuned
    assert mb64 >= 64 << 20  # above the threshold still mmap'd (and returned at once)
    assert switch == pytest.approx(0.0002)
