"""Reading a scan ahead of its first question (vlm_server.ChatServer._prepare), Qt-free: the real
request loop and the tiny random VLM of tests/model, in this process."""
from __future__ import annotations

import queue
import threading
from pathlib import Path

import numpy as np
import pytest

from napari_ctvqa.vlm_server import ChatServer, VolumePayload
from tests.model.conftest import tiny_vlm_dir  # noqa: F401 - fixture


def payload(seed: int) -> VolumePayload:
    array = np.random.default_rng(seed).normal(0.0, 300.0, (20, 40, 36)).astype(np.float32)
    return VolumePayload(array, (5.0, 1.5, 1.5), {})


def replies_of(replies: queue.Queue) -> list[tuple]:
    out = []
    while not replies.empty():
        out.append(replies.get_nowait())
    return [r for r in out if r[0] != "piece"]


@pytest.fixture
def server(tiny_vlm_dir: Path) -> tuple[ChatServer, queue.Queue]:  # noqa: F811
    replies: queue.Queue = queue.Queue()
    server = ChatServer(replies.put, threading.Event())
    server.handle(("load", str(tiny_vlm_dir), {"device": "cpu"}))
    assert replies.get_nowait()[0] == "loaded"
    return server, replies


def test_the_first_question_after_reading_ahead_reports_that_encoding_once(server) -> None:
    chat, replies = server
    chat.handle(("prepare", "scan-1", payload(1)))
    (kind, key, seconds), = replies_of(replies)
    assert (kind, key) == ("prepared", "scan-1") and seconds > 0
    assert chat.vlm.cached_keys  # the encoding and the image prefix are kept for the question
    chat.handle(("ask", 1, "scan-1", None, "Is there a nodule?", ["Yes", "No"], 4))
    done = replies_of(replies)[-1]
    assert done[0] == "done" and done[2]["encoding_s"] == seconds
    chat.handle(("ask", 2, "scan-1", None, "And the heart?", None, 4))
    assert replies_of(replies)[-1][2]["encoding_s"] is None  # a follow-up encoded nothing


def test_a_scan_that_cannot_be_read_ahead_is_said_and_the_question_fails_on_its_own(server) -> None:
    chat, replies = server
    flat = VolumePayload(np.zeros((4, 4), np.float32), (1.0, 1.0, 1.0), {})  # not a volume
    chat.handle(("prepare", "tiny", flat))
    (kind, key, message), = replies_of(replies)
    assert (kind, key) == ("prepare_failed", "tiny") and message and "\n" not in message
    chat.handle(("ask", 3, "tiny", None, "What is seen?", None, 4))
    failed = replies_of(replies)[-1]
    assert failed[0] == "failed" and failed[1] == 3


def test_read_aheads_overtaken_by_later_requests_are_skipped_and_the_question_times_its_encoding(
        tiny_vlm_dir: Path) -> None:  # noqa: F811
    """A reader flicking through three scans and asking about the last waits for one encoding,
    not three, and the question then reports that encoding as its own."""
    from napari_ctvqa.vlm_server import serve

    requests: queue.Queue = queue.Queue()
    replies: queue.Queue = queue.Queue()
    for request in [("load", str(tiny_vlm_dir), {"device": "cpu"}), ("prepare", "a", payload(1)),
                    ("prepare", "b", payload(2)), ("prepare", "c", payload(3)),
                    ("ask", 7, "c", None, "Is there a nodule?", ["Yes", "No"], 4),
                    ("ask", 8, "a", None, "And the heart?", None, 4), ("quit",)]:
        requests.put(request)
    serve(requests, replies, threading.Event())
    got = replies_of(replies)
    kinds = [r[0] for r in got]
    assert kinds[0] == "loaded" and "prepared" not in kinds
    assert [r[1] for r in got if r[0] == "prepare_skipped"] == ["a", "b", "c"]
    done = {r[1]: r[2] for r in got if r[0] == "done"}
    assert set(done) == {7, 8}  # the kept scans answer without their payload being sent again
    assert done[7]["encoding_s"] > 0 and done[8]["encoding_s"] > 0
    assert [r[1] for r in got if r[0] == "status"] == [7, 8]  # each said "encoding..."


def test_a_read_ahead_with_nothing_waiting_behind_it_still_reads(tiny_vlm_dir: Path) -> None:  # noqa: F811
    from napari_ctvqa.vlm_server import serve

    requests: queue.Queue = queue.Queue()
    replies: queue.Queue = queue.Queue()
    requests.put(("load", str(tiny_vlm_dir), {"device": "cpu"}))
    requests.put(("prepare", "a", payload(1)))
    thread = threading.Thread(target=serve, args=(requests, replies, threading.Event()))
    thread.start()
    try:
        first = replies.get(timeout=60)
        assert first[0] == "loaded"
        assert replies.get(timeout=60)[:2] == ("prepared", "a")
    finally:
        requests.put(("quit",))
        thread.join(timeout=60)
    assert not thread.is_alive()
