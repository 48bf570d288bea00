"""Process-fault sweeps: kill -9 during acknowledged ingest (standalone and
with a failover), ring peers killed mid-record, shared memory after kill -9.

Each sweep is a command in ``tools/`` (``sweep-kill-ingest``,
``sweep-ring-peers``, ``sweep-shm``) that prints its progress and a summary
(docs/reliability.md has the figures), and a function the test suite runs
for a few cycles.  Brokers are real (``python -m hpbroker serve`` through
``tests/brokerproc.py``), as are the client processes, the rings and the
kills; nothing is mocked.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for p in (ROOT, ROOT / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))
