"""A real OpenAI-compatible completions server for the tests: `transformers serve` on
127.0.0.1 with the tiny model, plus a fault-injecting proxy in front of it.

The proxy forwards every request to the real server unchanged (streams included, chunk by
chunk), records the bodies pygbot sent, and on demand answers a request with a 503 or holds
it past the client's timeout: the failures a real server shows under load, which cannot be
provoked on cue from the server itself.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiohttp import ClientPayloadError, ClientSession, web

HOST = "127.0.0.1"
START_TIMEOUT_S = 240.0  # importing torch + transformers + fastapi on a busy 2-core machine
POLL_S = 0.3
STOP_TIMEOUT_S = 15.0
HOLD_S = 3600.0  # a "hang" fault holds the request until the client gives up


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


class TransformersServe:
    """`transformers serve MODEL` as a child process, offline, CPU only."""

    def __init__(self, model_dir: Path, log_path: Path,
                 extra_args: Sequence[str] = ()) -> None:
        self.model_dir = model_dir
        self.log_path = log_path
        self.extra_args = list(extra_args)  # more `transformers serve` options
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "0"}
        command = [sys.executable, "-c", "from transformers.cli.transformers import main; main()",
                   "serve", str(self.model_dir), "--host", HOST, "--port", str(self.port),
                   "--device", "cpu", "--dtype", "float32", *self.extra_args]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=log)
        self._wait_until_healthy()

    def _wait_until_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if not self.alive:
                raise RuntimeError(f"transformers serve exited: {self._log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(POLL_S)
        self.stop()
        raise RuntimeError(f"transformers serve did not start in {START_TIMEOUT_S}s: "
                           f"{self._log_tail()}")

    def kill(self) -> None:
        """The server dies at once (SIGKILL), as in a crash."""
        if self.process is not None and self.alive:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(STOP_TIMEOUT_S)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.alive:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT_S)
        self.process = None

    def _log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:]


class FaultProxy:
    """Forwards to `upstream`; `faults` holds what to do with the next completions requests:
    "503", "hang" or "pass" (the default once the queue is empty)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.faults: deque[str] = deque()
        self.bodies: list[dict[str, Any]] = []  # every /v1/completions body, in order
        self.received = asyncio.Event()  # set once a completions request has arrived
        self.streamed = asyncio.Event()  # set once a streamed chunk has passed through
        self._runner: web.AppRunner | None = None
        self._session: ClientSession | None = None
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    async def __aenter__(self) -> FaultProxy:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/completions", self._completions)
        self._session = ClientSession()
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, HOST, self.port).start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _models(self, request: web.Request) -> web.Response:
        assert self._session is not None
        async with self._session.get(f"{self.upstream}/v1/models",
                                     headers=_auth(request)) as answer:
            return web.Response(status=answer.status, body=await answer.read(),
                                content_type="application/json")

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        self.received.set()
        fault = self.faults.popleft() if self.faults else "pass"
        if fault == "503":
            return web.json_response({"error": "overloaded"}, status=503)
        if fault == "hang":
            await asyncio.sleep(HOLD_S)
        return await self._forward(request, body)

    async def _forward(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        assert self._session is not None
        async with self._session.post(f"{self.upstream}/v1/completions", json=body,
                                      headers=_auth(request)) as answer:
            if not body.get("stream") or answer.status != 200:
                return web.Response(status=answer.status, body=await answer.read(),
                                    content_type="application/json")
            relay = web.StreamResponse(status=200,
                                       headers={"Content-Type": "text/event-stream"})
            await relay.prepare(request)
            try:
                async for chunk in answer.content.iter_any():
                    await relay.write(chunk)
                    self.streamed.set()
            except ClientPayloadError:
                # The server died mid-reply: drop the client's connection the same way.
                assert request.transport is not None
                request.transport.close()
                return relay
            await relay.write_eof()
            return relay


def _auth(request: web.Request) -> dict[str, str]:
    header = request.headers.get("Authorization")
    return {"Authorization": header} if header else {}
