"""``hpbroker log dump|verify``."""

from __future__ import annotations

import os

from tqdm import tqdm

from hpbroker.cli import main
from hpbroker.config import LogConfig
from hpbroker import batch as B
from hpbroker.io import PartitionLog, Storage
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


def flip_last_batch(path):
    data = open(path, "rb").read()
    last = max(pos for pos, _ in B.iter_batches(data))
    with open(path, "r+b") as f:
        f.seek(last + 100)
        c = f.read(1)[0]
        f.seek(last + 100)
        f.write(bytes([c ^ 1]))
    return last


def test_a_bad_last_batch_is_not_also_a_gap_at_the_next_segment(tmp_path, capsys):
    # issue 26: verify tracked the expected offset from good batches only, so a
    # bad last batch also showed as "segment starts at offset X, the previous one ends at Y"
    d = make_data(tmp_path)
    segs = layout.list_segments(str(d / "t-0"))
    assert len(segs) > 2
    path = layout.log_path(str(d / "t-0"), segs[0])
    last = flip_last_batch(path)
    assert main(["log", "verify", str(d)]) == 1
    bad = [l for l in capsys.readouterr().out.splitlines() if l.startswith("BAD")]
    assert bad == [bad[0]] and f"{path} position {last}: CRC32C mismatch" in bad[0]


def test_an_overlap_after_a_bad_last_batch_is_still_reported(tmp_path, capsys):
    d = make_data(tmp_path)
    pd = str(d / "t-0")
    segs = layout.list_segments(pd)
    flip_last_batch(layout.log_path(pd, segs[0]))
    # segment 1 renamed to start below segment 0's last good batch
    for suffix in (".log", ".index", ".timeindex"):
        os.rename(os.path.join(pd, layout.segment_name(segs[1]) + suffix), os.path.join(pd, layout.segment_name(5) + suffix))
    assert main(["log", "verify", pd]) == 1
    out = capsys.readouterr().out
    assert "segment starts at offset 5, the previous one ends at" in out


def test_junk_after_the_zero_padding_of_a_crashed_segment_is_named(tmp_path, capsys, caplog):
    # issue 26: bytes after the O_DIRECT padding of a crashed segment were cut with no warning line
    d = tmp_path / "t-0"
    log = PartitionLog(str(d), CFG)
    for i in range(20):
        log.append(make_batch(2, 200, tag=i), 0)
    log.flush()
    end = log.log_end_offset
    path = log.segments()[-1].log_path
    size = os.path.getsize(path)
    assert size % 4096 == 0  # unclean: the padding is still there
    with open(path, "ab") as f:
        f.write(os.urandom(3000).replace(b"\0", b"\1"))
    assert main(["log", "verify", str(d)]) == 1
    bad = [l for l in capsys.readouterr().out.splitlines() if l.startswith("BAD")]
    assert len(bad) == 1 and f"3000 bytes that are not a batch from position {size}" in bad[0]
    with caplog.at_level("WARNING", logger="hpbroker.io"):
        log2 = PartitionLog(str(d), CFG)
    try:
        assert log2.fenced is None and log2.log_end_offset == end
        warned = [r.getMessage() for r in caplog.records if "torn tail" in r.getMessage()]
        assert len(warned) == 1 and f"non-zero bytes from position {size}" in warned[0]
    finally:
        log2.close()


def test_zero_padding_alone_is_cut_without_a_warning(tmp_path, capsys, caplog):
    d = tmp_path / "t-0"
    log = PartitionLog(str(d), CFG)
    log.append(make_batch(2, 200), 0)
    log.flush()
    assert main(["log", "verify", str(d)]) == 0
    with caplog.at_level("WARNING", logger="hpbroker.io"):
        PartitionLog(str(d), CFG).close()
    assert not [r for r in caplog.records if "torn tail" in r.getMessage()]
