"""What the fault-injection sweeps in tools/ share (docs/reliability.md).

Each sweep is a script in tools/ with ``run(trials, seed, workdir,
progress) -> dict`` (the test suite runs a short version through
:func:`load`) and a ``main()`` that prints its figures and exits non-zero
when a target is missed.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import time
from importlib.machinery import SourceFileLoader

TOOLS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TOOLS)
sys.path.insert(0, ROOT)  # the hpbroker beside these tools, not an installed one (and in the processes they start)
os.environ["PYTHONPATH"] = os.pathsep.join([ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])


def load(name: str):
    """A tools/ script as a module (``tools/sweep-torn`` -> ``load("sweep-torn")``)."""
    loader = SourceFileLoader(name.replace("-", "_"), os.path.join(TOOLS, name))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


class Progress:
    """``n/total`` on stderr every second (a terminal) or every 10 % (a log)."""

    def __init__(self, what: str, total: int, enabled: bool = True):
        self.what, self.total, self.enabled = what, total, enabled
        self.t0 = self.last = time.monotonic()
        self.step = max(1, total // 10)

    def __call__(self, done: int, note: str = "") -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if (sys.stderr.isatty() and now - self.last >= 1) or (not sys.stderr.isatty() and done % self.step == 0) \
                or done == self.total:
            self.last = now
            end = "\n" if done == self.total or not sys.stderr.isatty() else "\r"
            print(f"{self.what}: {done}/{self.total} ({now - self.t0:.0f} s) {note}", end=end, file=sys.stderr,
                  flush=True)


def fresh(root: str, name: str) -> str:
    d = os.path.join(root, name)
    shutil.rmtree(d, ignore_errors=True)
    return d
