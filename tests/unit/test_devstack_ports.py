"""Port helpers of the dev stack, without child processes."""

from __future__ import annotations

import socket

import pytest

from tierline.devstack.process import free_port, port_is_free, wait_for_tcp


def test_free_port_can_be_bound_and_is_then_taken() -> None:
    port = free_port()
    assert 1024 <= port <= 65535
    assert port_is_free(port)
    with socket.create_server(("127.0.0.1", port)):
        assert not port_is_free(port)
        wait_for_tcp("127.0.0.1", port, timeout=2)


def test_wait_for_tcp_times_out_on_a_closed_port() -> None:
    port = free_port()
    with pytest.raises(RuntimeError, match=f"nothing listening on 127.0.0.1:{port}"):
        wait_for_tcp("127.0.0.1", port, timeout=0.3)
