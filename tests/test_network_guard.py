import socket

import pytest

from tests import conftest


def test_outbound_connection_is_refused_and_recorded() -> None:
    with pytest.raises(ConnectionRefusedError, match="network access attempted"):
        socket.create_connection(("93.184.216.34", 80), timeout=1)
    assert conftest._network_attempts, "the attempt must be recorded so the test fails even if swallowed"
    conftest._network_attempts.clear()  # this test provoked it on purpose


def test_name_resolution_of_remote_hosts_is_refused() -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.getaddrinfo("huggingface.co", 443)
    conftest._network_attempts.clear()


def test_loopback_is_allowed() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname(), timeout=1)
    client.close()
    server.close()
