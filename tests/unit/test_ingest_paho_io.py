"""anchor.ingest.paho_io: the ingestor's cheaper paths through paho send and read the same bytes."""

from __future__ import annotations

import socket

from anchor.broker.client import create_client, parse_mqtt_url
from anchor.ingest.paho_io import READ_SIZE, BufferedSocket, puback_all


def _client() -> object:
    return create_client(parse_mqtt_url("mqtt://127.0.0.1:1"), client_id="t", manual_ack=True)


def _queued(client: object) -> bytes:
    return b"".join(bytes(p["packet"]) for p in client._out_packet)  # type: ignore[attr-defined]


def test_puback_all_queues_the_packets_ack_would() -> None:
    mids = [1, 2, 255, 256, 4000, 65535]
    one_by_one, at_once = _client(), _client()
    for mid in mids:
        one_by_one.ack(mid, 1)  # type: ignore[attr-defined]
    puback_all(at_once, mids)  # type: ignore[arg-type]
    assert _queued(at_once) == _queued(one_by_one)
    assert len(at_once._out_packet) == 1  # type: ignore[attr-defined]
    puback_all(at_once, [])  # type: ignore[arg-type]
    assert len(at_once._out_packet) == 1  # type: ignore[attr-defined]


def test_buffered_socket_serves_small_reads_from_one_recv() -> None:
    a, b = socket.socketpair()
    try:
        wrapped = BufferedSocket(b)
        stream = bytes(range(256)) * 40
        a.sendall(stream)
        got = bytearray()
        got += wrapped.recv(1)
        assert wrapped.pending() == len(stream) - 1  # the rest is held here, not in the kernel
        while len(got) < len(stream):
            got += wrapped.recv(7)
        assert bytes(got) == stream
        assert wrapped.pending() == 0
        b.setblocking(False)
        try:
            wrapped.recv(1)
        except BlockingIOError:
            pass  # what paho expects from an empty non-blocking socket
        else:  # pragma: no cover
            raise AssertionError("an empty socket must raise BlockingIOError")
        assert wrapped.fileno() == b.fileno()  # everything else is the socket's own
        a.sendall(b"y" * 1000)
        b.setblocking(True)
        assert wrapped.recv(READ_SIZE * 2) == b"y" * 1000  # a large read passes through
        a.close()
        assert wrapped.recv(1) == b""  # the peer closed: returned as is
    finally:
        a.close()
        b.close()
