"""storage.requests.at_once: the one "several store requests at a time" helper of verify,
previews and the Zarr layout's creation."""

from __future__ import annotations

import threading
import time

import pytest

from cloudmic.storage.requests import AT_ONCE, at_once


def test_results_keep_their_order_and_run_side_by_side():
    running, peak, lock = [0], [0], threading.Lock()

    def job(x: int) -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.02)  # a request's latency
        with lock:
            running[0] -= 1
        return x * x

    assert at_once(job, range(20)) == [x * x for x in range(20)]
    assert 2 <= peak[0] <= AT_ONCE


def test_one_thread_or_one_item_runs_here_and_an_error_raises():
    here = threading.get_ident()
    assert at_once(lambda x: threading.get_ident(), [1, 2], threads=1) == [here, here]
    assert at_once(lambda x: threading.get_ident(), [1]) == [here]

    def fail(x: int) -> int:
        if x == 3:
            raise ValueError("bad 3")
        return x

    with pytest.raises(ValueError, match="bad 3"):
        at_once(fail, range(6))
