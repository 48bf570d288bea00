"""``hpbroker log dump|verify``."""

from __future__ import annotations

import os

from hpbroker.cli import main
from hpbroker.config import LogConfig
from hpbroker.io import Storage
from hpbroker.io import layout
from hpbroker.io.testing import make_batch

CFG = LogConfig(segment_bytes=1 << 16, write_buffer_bytes=1 << 16)


def make_data(tmp_path, n=300):
    with Storage(tmp_path, CFG) as st:
        for p in range(2):
            log = st.partition("t", p)
            for i in range(n):
                log.append(make_batch(2, 200, ts=5000 + i, tag=i), 0)
            log.flush()
    return tmp_path


def test_verify_clean_data_dir_and_partition_dir(tmp_path, capsys):
    d = make_data(tmp_path)
    assert main(["log", "verify", str(d)]) == 0
    assert "600 batches intact, 0 bad" in capsys.readouterr().err
    assert main(["log", "verify", str(d / "t-1")]) == 0


def test_dump_lists_batches(tmp_path, capsys):
    d = make_data(tmp_path, n=10)
    assert main(["log", "dump", str(d / "t-0")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 11
    first = lines[1].split("\t")
    assert first[:6] == ["00000000000000000000.log", "0", "0", "1", "2", "5000"] and first[-1] == "ok"


def test_verify_names_each_bad_batch(tmp_path, capsys):
    d = make_data(tmp_path)
    segs = layout.list_segments(str(d / "t-0"))
    targets = [(layout.log_path(str(d / "t-0"), segs[0]), 1000), (layout.log_path(str(d / "t-0"), segs[1]), 3000)]
    for path, pos in targets:
        with open(path, "r+b") as f:
            f.seek(pos)
            c = f.read(1)[0]
            f.seek(pos)
            f.write(bytes([c ^ 1]))
    assert main(["log", "verify", str(d)]) == 1
    out = capsys.readouterr().out
    bad = [l for l in out.splitlines() if l.startswith("BAD")]
    assert len(bad) == 2
    for (path, _), line in zip(targets, bad):
        assert path in line and "position" in line


def test_user_errors(tmp_path, capsys):
    assert main(["log", "verify", str(tmp_path / "nope")]) == 2
    os.mkdir(tmp_path / "empty")
    assert main(["log", "dump", str(tmp_path / "empty")]) == 2
    assert "holds no partition" in capsys.readouterr().err
