"""A real Chroma server (`chroma run`) on 127.0.0.1 for the tests and the benchmarks: on a
free port, waited for until it answers, always stopped afterwards."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL if it has not stopped within `timeout` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass(frozen=True)
class ChromaServer:
    host: str
    port: int
    pid: int


@contextmanager
def running_chroma(data: Path, log: Path, *, start_timeout_s: float = 60) -> Iterator[ChromaServer]:
    """`chroma run` on the store in folder `data`, its output in the file `log`."""
    port = free_port()
    chroma = Path(sys.executable).parent / "chroma"
    data.mkdir(parents=True, exist_ok=True)
    command = [chroma, "run", "--path", data, "--host", "127.0.0.1", "--port", port]
    with open(log, "wb") as output:
        proc = subprocess.Popen(list(map(str, command)), stdout=output, stderr=subprocess.STDOUT)
        try:
            _wait_until_it_answers(proc, port, start_timeout_s, log)
            yield ChromaServer("127.0.0.1", port, proc.pid)
        finally:
            stop_process(proc, timeout=10)


def _wait_until_it_answers(proc: subprocess.Popen, port: int, timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1)
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Chroma server did not start: see {log}") from None
            time.sleep(0.2)
