"""A real `funnel serve` subprocess on a free loopback port, for tests that talk HTTP to it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

_LISTENING = re.compile(r"listening on (http://\S+)")


class FunnelServer:
    """`python -m funnel serve --port 0 ...` in a folder; `.url` once /healthz answers 200."""

    def __init__(self, cwd: Path, args: tuple[str, ...] = (), env: dict[str, str] | None = None) -> None:
        self.cwd = cwd
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.url = ""
        self.stderr_lines: list[str] = []
        self._process: subprocess.Popen[str] | None = None
        self._found = threading.Event()
        self._reader: threading.Thread | None = None

    def start(self, timeout: float = 30) -> FunnelServer:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "funnel", "serve", "--port", "0", *self.args],
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        if not self._found.wait(timeout):
            self.stop()
            raise RuntimeError(f"funnel serve did not start: {''.join(self.stderr_lines)}")
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or self._process.poll() is not None:
                self.stop()
                raise RuntimeError(f"funnel serve never became healthy: {''.join(self.stderr_lines)}")
            time.sleep(0.05)

    def _drain(self) -> None:
        assert self._process is not None and self._process.stderr is not None
        for line in self._process.stderr:
            self.stderr_lines.append(line)
            match = _LISTENING.search(line)
            if match and not self._found.is_set():
                self.url = match.group(1)
                self._found.set()

    @property
    def stderr(self) -> str:
        return "".join(self.stderr_lines)

    def client(self) -> httpx.Client:
        """An HTTP client on this server: no redirects followed, no cookies kept between tests."""
        return httpx.Client(base_url=self.url, timeout=10, follow_redirects=False)

    def stop(self) -> int | None:
        """SIGTERM, then wait (uvicorn shuts down gracefully); the exit code."""
        if self._process is None:
            return None
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)
        if self._process.stderr is not None:
            self._process.stderr.close()
        return self._process.returncode
