import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from zoo.data.files import ordered_results


def test_ordered_results_keep_order_and_stay_a_bounded_window_ahead():
    started: list[int] = []
    lock = threading.Lock()

    def work(i: int) -> int:
        with lock:
            started.append(i)
        return i * i

    with ThreadPoolExecutor(3) as pool:
        results = ordered_results(pool, work, range(20), ahead=4)
        first = next(results)
        assert first == (0, 0) and max(started) <= 4  # 4 submitted up front, one more after the first result
        assert list(results) == [(i, i * i) for i in range(1, 20)]


def test_ordered_results_raise_in_order_and_cancel_what_is_queued():
    gate, started = threading.Event(), []

    def work(i: int) -> int:
        started.append(i)
        if i == 1:
            raise ValueError("item 1 is bad")
        if i == 2:
            gate.wait(10)  # keeps the single worker busy while item 3 waits in the queue
        return i

    with ThreadPoolExecutor(1) as pool:
        results = ordered_results(pool, work, range(10), ahead=3)
        assert next(results) == (0, 0)
        with pytest.raises(ValueError, match="item 1"):
            next(results)
        gate.set()
    assert list(results) == [] and 3 not in started  # item 3 was cancelled, never run
