"""``hpbroker tail``: ship log files into the broker (MetaQ's tail4j).

One unit per job, each taking its resources (directories, clocks, a send
function) as parameters, so the logic is tested without sockets:

* :mod:`~hpbroker.tail.config` - the settings, from TOML or flags, checked;
* :mod:`~hpbroker.tail.lines` - a chunk cut into lines or multiline records;
* :mod:`~hpbroker.tail.router` - each record's partition and key;
* :mod:`~hpbroker.tail.follower` - which files, where: ``tail -F`` by polling
  (rotation, copytruncate, truncation, new and deleted files);
* :mod:`~hpbroker.tail.checkpoint` - per-file positions, written durably;
* :mod:`~hpbroker.tail.shipper` - read, cut, send; move checkpoints as acks
  arrive, in file order; the in-flight bound;
* :mod:`~hpbroker.tail.status` - the status line, the broker's state changes;
* :mod:`~hpbroker.tail.agent` - the loop and the orderly stop.

The command (``hpbroker/commands/tail.py``) wires them to a
``Producer``.  docs/tail.md is the user's guide.
"""
