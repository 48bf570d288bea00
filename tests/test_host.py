"""What a broker takes from its host before it starts: refusals are one line."""

from __future__ import annotations

import os
import socket

import pytest

from hpbroker.broker.host import StartupError, check_port, lock_data_dir


def test_a_data_directory_is_locked_by_one_broker_at_a_time(tmp_path):
    fd = lock_data_dir(tmp_path / "data")
    try:
        with pytest.raises(StartupError, match="in use by another broker"):
            lock_data_dir(tmp_path / "data")
        assert (tmp_path / "data" / ".lock").read_text() == f"{os.getpid()}\n"
    finally:
        os.close(fd)
    os.close(lock_data_dir(tmp_path / "data"))  # released with its fd


def test_a_port_in_use_is_refused_before_anything_starts():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        with pytest.raises(StartupError, match=r"cannot listen on 127\.0\.0\.1:\d+"):
            check_port("127.0.0.1", s.getsockname()[1])
    finally:
        s.close()
