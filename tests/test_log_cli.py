"""``hpbroker log dump|verify``."""

from __future__ import annotations

import os

from tqdm import tqdm

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


def make_replica(d, n=300, differ_at=None):
    """Two partitions of ``n`` two-record batches; batch ``differ_at`` of t-1 holds other (valid) bytes."""
    with Storage(d, CFG) as st:
        for p in range(2):
            log = st.partition("t", p)
            for i in range(n):
                tag = i + 1000 if (p == 1 and i == differ_at) else i
                log.append(make_batch(2, 200, ts=5000 + i, tag=tag), 0)
            log.flush()
    return d


def verdicts(out: str) -> dict[str, str]:
    return {line.split()[1].rstrip(":"): line for line in out.splitlines() if line.startswith(("SAME", "DIFFER"))}


def test_compare_identical_replicas_and_a_shorter_one(tmp_path, capsys):
    a, b, short = make_replica(tmp_path / "a"), make_replica(tmp_path / "b"), make_replica(tmp_path / "s", n=100)
    assert main(["log", "verify", str(a), "--compare", str(b)]) == 0
    v = verdicts(capsys.readouterr().out)
    assert v.keys() == {"t-0", "t-1"} and "300 batches identical below offset 600" in v["t-1"]
    # a replica that is behind matches up to its own end ...
    assert main(["log", "verify", str(a), "--compare", str(short)]) == 0
    assert "100 batches identical below offset 200 (logs end at 600 and 200)" in verdicts(capsys.readouterr().out)["t-0"]
    # ... but not when both must reach an offset
    assert main(["log", "verify", str(a), "--compare", str(short), "--upto", "400"]) == 1
    assert "a log ends before offset 400 (ends at 600 and 200)" in verdicts(capsys.readouterr().out)["t-0"]


def test_compare_names_the_first_batch_that_differs(tmp_path, capsys):
    a, b = make_replica(tmp_path / "a"), make_replica(tmp_path / "b", differ_at=150)
    assert main(["log", "verify", str(a), "--compare", str(b)]) == 1
    v = verdicts(capsys.readouterr().out)
    assert v["t-0"].startswith("SAME")
    assert "batch at offset 300 differs" in v["t-1"]
    # below the difference the replicas still agree
    assert main(["log", "verify", str(a / "t-1"), "--compare", str(b / "t-1"), "--upto", "300"]) == 0


def test_a_batch_with_no_counterpart_at_its_offset_differs(tmp_path, capsys):
    a, b = make_replica(tmp_path / "a"), make_replica(tmp_path / "b")
    part = str(b / "t-0")
    first = layout.list_segments(part)[0]
    for f in os.listdir(part):  # b's oldest segment is gone, as retention would remove it
        if f.startswith(os.path.basename(layout.log_path(part, first)).removesuffix(".log")):
            os.remove(os.path.join(part, f))
    assert main(["log", "verify", str(a), "--compare", str(b)]) == 1
    assert "batch 0..1 has no batch at the same offset" in verdicts(capsys.readouterr().out)["t-0"]


def test_verify_shows_progress_in_bytes_when_asked(tmp_path, capsys):
    d = make_data(tmp_path)
    total = sum(os.path.getsize(layout.log_path(str(d / f"t-{p}"), b))
                for p in range(2) for b in layout.list_segments(str(d / f"t-{p}")))
    assert main(["log", "verify", str(d), "--progress"]) == 0
    size = tqdm.format_sizeof(total, divisor=1024)
    err = capsys.readouterr().err
    assert "verify: 100%" in err and f"| {size}/{size} [" in err  # every byte of every segment counted
    assert main(["log", "verify", str(d), "--compare", str(d), "--progress"]) == 0
    assert "compare: 100%" in capsys.readouterr().err
    assert main(["log", "verify", str(d)]) == 0  # not a terminal: no bar
    assert "verify:" not in capsys.readouterr().err
