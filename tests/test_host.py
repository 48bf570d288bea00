"""What a broker takes from its host before it starts: refusals are one line."""

from __future__ import annotations

import os
import socket

import pytest

from hpbroker.broker.host import StartupError, check_port, claim_instance, lock_data_dir


def test_a_data_directory_is_locked_by_one_broker_at_a_time(tmp_path):
    fd = lock_data_dir(tmp_path / "data")
    try:
        with pytest.raises(StartupError, match="in use by another broker"):
            lock_data_dir(tmp_path / "data")
        assert (tmp_path / "data" / ".lock").read_text() == f"{os.getpid()}\n"
    finally:
        os.close(fd)
    os.close(lock_data_dir(tmp_path / "data"))  # released with its fd


def test_an_instance_name_is_claimed_by_one_broker_at_a_time_and_freed_with_its_holder(tmp_path):
    name = f"test{os.getpid()}.{tmp_path.name}"  # unique to this test run
    claim = claim_instance(name)
    with pytest.raises(StartupError, match=f"instance {name!r} is already running"):
        claim_instance(name)
    claim_instance(f"{name}.other").close()  # another name is independent
    claim.close()
    claim_instance(name).close()  # free again once its holder is gone
    # a holder killed with SIGKILL frees it too (the kernel closes its socket)
    child = os.fork()
    if child == 0:
        claim_instance(name)
        os.kill(os.getpid(), 9)
    os.waitpid(child, 0)
    claim_instance(name).close()


def test_a_port_in_use_is_refused_before_anything_starts():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        with pytest.raises(StartupError, match=r"cannot listen on 127\.0\.0\.1:\d+"):
            check_port("127.0.0.1", s.getsockname()[1])
    finally:
        s.close()
