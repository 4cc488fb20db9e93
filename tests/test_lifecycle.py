"""core.models.lifecycle: the load / loaded / close every model shares, on a stand-in model
(the real ones are tested in test_encoder.py and test_vqa.py)."""

from __future__ import annotations

import threading
import time

import pytest

from core.errors import ModelUnavailable
from core.models.lifecycle import LazyModel


class Counted(LazyModel[str]):
    """Loads "weights <n>"; the loads listed in `fail` raise."""

    def __init__(self, fail: tuple[int, ...] = (), retry_after_s: float = 0.0) -> None:
        super().__init__("counted", "cpu", retry_after_s=retry_after_s)
        self.loads = 0
        self.fail = fail

    def _load(self) -> str:
        self.loads += 1
        if self.loads in self.fail:
            raise ModelUnavailable(f"load {self.loads} failed")
        time.sleep(0.01)  # long enough for concurrent callers to meet
        return f"weights {self.loads}"

    def use(self) -> str:
        return self._model()


def test_loads_once_on_first_use_from_many_threads() -> None:
    model = Counted()
    assert not model.loaded and model.loads == 0
    got: list[str] = []
    threads = [threading.Thread(target=lambda: got.append(model.use())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert model.loads == 1 and got == ["weights 1"] * 8 and model.loaded


def test_a_failed_load_is_retried() -> None:
    model = Counted(fail=(1,))
    with pytest.raises(ModelUnavailable, match="load 1 failed"):
        model.load()
    assert not model.loaded
    assert model.use() == "weights 2" and model.loaded


def test_a_failed_load_is_not_retried_before_its_time() -> None:
    model = Counted(fail=(1,), retry_after_s=60.0)
    now = [100.0]
    model._clock = lambda: now[0]
    with pytest.raises(ModelUnavailable, match="load 1 failed"):
        model.use()
    now[0] += 59
    with pytest.raises(ModelUnavailable, match="not retried for another 1 s"):
        model.use()
    assert model.loads == 1
    now[0] += 2
    assert model.use() == "weights 2"


def test_close_frees_the_weights_until_load_opens_them_again() -> None:
    model = Counted()
    model.load()
    model.close()
    assert not model.loaded
    for _ in range(2):  # closed stays closed: no load behind the caller's back
        with pytest.raises(ModelUnavailable, match="counted is closed"):
            model.use()
    assert model.loads == 1
    model.load()
    assert model.loaded and model.use() == "weights 2"
    model.close()
    model.close()  # closing twice is harmless
    assert not model.loaded


def test_closing_a_model_never_loaded_is_harmless() -> None:
    model = Counted()
    model.close()
    assert model.loads == 0 and not model.loaded
