"""A loopback stand-in for the Hugging Face Hub: serves one folder as a model repository.

Just enough of the Hub's HTTP API for huggingface_hub's `model_info` and `snapshot_download`:
the repository's info and file tree, and each file under `resolve/` with the headers the
client reads (commit, ETag, size); anything else is a 404, as the Hub answers it. Binds
127.0.0.1 only; every request is recorded.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
COMMIT = "c0ffee0000000000000000000000000000000001"


class HubEmulator:
    def __init__(self, repo_id: str, folder: Path) -> None:
        self.repo_id = repo_id
        self.folder = folder
        self.requests: list[str] = []  # "METHOD path" in order
        self.url = ""

    def files(self) -> list[str]:
        return sorted(path.relative_to(self.folder).as_posix()
                      for path in self.folder.rglob("*") if path.is_file())

    async def info(self, request: web.Request) -> web.Response:
        if request.match_info["repo"] != self.repo_id:
            return web.json_response({"error": "Repository not found"}, status=404,
                                     headers={"X-Error-Code": "RepoNotFound"})
        return web.json_response({
            "id": self.repo_id, "modelId": self.repo_id, "sha": COMMIT, "private": False,
            "siblings": [{"rfilename": name} for name in self.files()]})

    async def tree(self, request: web.Request) -> web.Response:
        if request.match_info["repo"] != self.repo_id:
            return web.json_response({"error": "Repository not found"}, status=404,
                                     headers={"X-Error-Code": "RepoNotFound"})
        return web.json_response([
            {"type": "file", "path": name, "size": (self.folder / name).stat().st_size,
             "oid": hashlib.sha1((self.folder / name).read_bytes()).hexdigest()}
            for name in self.files()])

    async def resolve(self, request: web.Request) -> web.StreamResponse:
        path = self.folder / request.match_info["file"]
        if request.match_info["repo"] != self.repo_id or not path.is_file():
            return web.Response(status=404, headers={"X-Error-Code": "EntryNotFound"})
        data = path.read_bytes()
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                   "Content-Length": str(len(data))}
        if request.method == "HEAD":
            return web.Response(headers=headers)
        return web.Response(body=data, headers=headers)

    def app(self) -> web.Application:
        @web.middleware
        async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
            self.requests.append(f"{request.method} {request.path}")
            return await handler(request)

        app = web.Application(middlewares=[record])
        app.router.add_get("/api/models/{repo:.+?}/revision/{revision}", self.info)
        app.router.add_get("/api/models/{repo:.+?}/tree/{revision}", self.tree)
        app.router.add_get("/api/models/{repo:.+}", self.info)
        app.router.add_route("*", "/{repo:.+?}/resolve/{revision}/{file:.+}", self.resolve)
        return app


@contextlib.asynccontextmanager
async def serving(hub: HubEmulator) -> AsyncIterator[HubEmulator]:
    runner = web.AppRunner(hub.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    hub.url = f"http://127.0.0.1:{port}"
    try:
        yield hub
    finally:
        await runner.cleanup()
