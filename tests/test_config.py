"""Configuration: typed, documented, unknown keys refused, one-line CLI errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hpbroker import config

ROOT = Path(__file__).resolve().parent.parent


def test_docs_config_md_matches_the_code():
    assert (ROOT / "docs" / "config.md").read_text() == config.render_docs(), \
        "docs/config.md is stale: regenerate it with `hpbroker config docs > docs/config.md`"


def test_every_key_has_a_description():
    missing = [key for key, _, _, desc in config.describe() if not desc]
    assert missing == []


def test_toml_overrides_and_flags(tmp_path):
    p = tmp_path / "b.toml"
    p.write_text('[broker]\nport = 7700\n[log]\nflush_mode = "async"\n')
    cfg = config.load(p, broker__acceptors=2)
    assert (cfg.broker.port, cfg.broker.acceptors, cfg.log.flush_mode) == (7700, 2, "async")
    assert cfg.instance == "p7700"
    assert config.loads(config.dumps(cfg)) == cfg


@pytest.mark.parametrize(
    "text, words",
    [
        ("[broker]\nbogus = 1\n", "bogus"),
        ("[nosuchsection]\n", "nosuchsection"),
        ('[log]\nflush_mode = "sometimes"\n', "flush_mode"),
        ("[ring]\ncapacity_bytes = 100000\n", "power of two"),
        ("[ring]\ncapacity_bytes = 1048576\n", "must fit one ring record"),
        ("[broker]\nport = 0\n", "port"),
        ('[ring]\nspin_us = "fast"\n', "spin_us"),
        ("[ring]\nspin_us = -5\n", "spin_us"),
        ("this is not toml", "b.toml"),
    ],
)
def test_bad_config_is_refused_with_a_reason(tmp_path, text, words):
    p = tmp_path / "b.toml"
    p.write_text(text)
    with pytest.raises(config.ConfigError, match=words):
        config.load(p)
    r = subprocess.run([sys.executable, "-m", "hpbroker", "config", "check", str(p)], capture_output=True, text=True)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and r.stdout == ""


def test_ring_spin_auto_spins_only_with_cpus_to_spare(tmp_path):
    auto = config.Config().ring
    assert auto.spin_us == "auto"
    assert auto.spin(cpus=2) == 0 and auto.spin(cpus=3) == 0  # the waiter would take the CPU of the side it waits for
    assert auto.spin(cpus=4) == auto.spin(cpus=64) == config.AUTO_SPIN_US > 0
    p = tmp_path / "b.toml"
    p.write_text("[ring]\nspin_us = 20\n")
    assert config.load(p).ring.spin(cpus=2) == 20  # an explicit value is taken as it is


def test_serve_rejects_bad_flags_with_exit_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "hpbroker", "serve", "--port", "70000", "--data-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "port" in r.stderr and len(r.stderr.strip().splitlines()) == 1
