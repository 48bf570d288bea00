"""Shared-memory counters, gauges, histograms and log tails of a broker's processes.

* :mod:`~hpbroker.stats.layout` - the byte layout, drawn as tables;
* :class:`StatsBlock` - create (the supervisor), attach, unlink; over any buffer;
* :class:`Slot` - one process's writer side (per request / batch / round);
* :mod:`~hpbroker.stats.reader` - the read side (the HTTP process): totals,
  histograms, partition rows, log lines, with numpy, taking no lock;
* :class:`SlotLogHandler` - the last log lines of a process, in its slot.

:func:`process_slot` is what a broker process calls once: its slot in the
running broker's block (or a private one when there is no block, e.g. a
part started by a test), with its log lines captured.
"""

from __future__ import annotations

import logging

from hpbroker.stats import layout
from hpbroker.stats.block import NullSlot, Slot, StatsBlock, cleanup_stale, reclaim_dead, segment_name  # noqa: F401
from hpbroker.stats.logtail import SlotLogHandler, read_lines

__all__ = ["layout", "Slot", "NullSlot", "StatsBlock", "SlotLogHandler", "cleanup_stale", "segment_name",
           "read_lines", "process_slot", "capture_logs", "block_of"]

_attached: dict[tuple[str, str], Slot] = {}
_blocks: dict[str, StatsBlock | None] = {}


def block_of(instance: str) -> StatsBlock | None:
    """``instance``'s block as this process attached it (once), or None when there is none."""
    if instance not in _blocks:
        _blocks[instance] = StatsBlock.attach(instance)
    return _blocks[instance]


def process_slot(instance: str, name: str) -> Slot:
    """This process's slot ``name`` in ``instance``'s block, attached once
    per process (the block stays mapped for the process's life)."""
    key = (instance, name)
    slot = _attached.get(key)
    if slot is None:
        block = block_of(instance)
        if block is None or name not in block.index:
            slot = NullSlot()
        else:
            slot = block.slot(name)
        _attached[key] = slot
    return slot


def capture_logs(slot: Slot, logger: str = "hpbroker") -> SlotLogHandler:
    """Keep the last lines ``logger`` (and its children) log in ``slot``."""
    h = SlotLogHandler(slot.w)
    logging.getLogger(logger).addHandler(h)  # the level stays the process's (serve --log-level)
    return h
