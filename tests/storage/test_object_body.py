"""``ObjectBody``: bytes readable while another thread drains one GET into it."""

from __future__ import annotations

import tarfile
import threading
import time

import pytest

from cloudmic.storage.location import Location
from cloudmic.storage.object_body import BodyClosed, ObjectBody


def test_reads_in_order_across_pieces_while_they_arrive():
    body = ObjectBody("x")
    data = bytes(range(256)) * 1000
    pieces = [data[i:i + 7001] for i in range(0, len(data), 7001)]
    first_read = threading.Event()

    def fill() -> None:
        body.feed(pieces[0])
        first_read.wait(5)  # the reader got bytes before the rest existed
        for p in pieces[1:]:
            body.feed(p)
        body.finish()

    t = threading.Thread(target=fill)
    t.start()
    got = bytearray(body.read(100))
    first_read.set()
    while chunk := body.read(4096):
        got += chunk
    t.join()
    assert bytes(got) == data


def test_error_comes_after_the_bytes_before_it():
    body = ObjectBody("x")
    body.feed(b"abc")
    body.finish(ConnectionResetError("cut"))
    assert body.read(10) == b"abc"
    with pytest.raises(ConnectionResetError, match="cut"):
        body.read(10)


def test_closing_stops_the_filler():
    body = ObjectBody("x")
    body.feed(b"abc")
    body.close()
    with pytest.raises(BodyClosed):
        body.feed(b"def")


def test_a_tar_decodes_from_a_local_drain(tmp_path):
    src = tmp_path / "a.tar"
    members = {f"{i:04d}.bin": bytes([i % 251]) * (3 << 20) for i in range(3)}
    with tarfile.open(src, "w") as tar:
        for name in members:
            (tmp_path / name).write_bytes(members[name])
            tar.add(tmp_path / name, arcname=name)
    body = ObjectBody(str(src))
    t = threading.Thread(target=Location(str(src)).drain_into, args=(body,))
    t.start()
    with tarfile.open(fileobj=body, mode="r|") as tar:
        got = {m.name: tar.extractfile(m).read() for m in tar}
    t.join()
    assert got == members


def test_a_missing_object_reaches_the_reader(tmp_path):
    body = ObjectBody(str(tmp_path / "gone.tar"))
    Location(body.name).drain_into(body)
    with pytest.raises(FileNotFoundError):
        body.read(1)


def test_a_closed_body_is_not_fetched(tmp_path, monkeypatch):
    calls = []
    loc = Location(str(tmp_path / "a.tar"))
    monkeypatch.setattr(type(loc.backend), "get_pieces",
                        lambda *a: calls.append(time.time()))
    body = ObjectBody(loc.url)
    body.close()
    loc.drain_into(body)
    assert calls == []
