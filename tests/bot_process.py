"""`python bot.py` as an admin runs it, pointed at the loopback Discord emulator.

The emulator runs in the caller's event loop (it binds 127.0.0.1 only); the bot is a real
child process with its settings in the environment, its own SQLite file and a model folder,
so signals, exit codes and restarts are the real ones. Used by the process tests and by
bench/load.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from tests.discord_emulator import DiscordEmulator

REPO = Path(__file__).resolve().parent.parent
READY_LINE = "caught up on"  # ChatCog.catch_up logs it once connected, before answering
STOPPED_LINE = "stopped cleanly"
POLL_S = 0.05
READY_TIMEOUT_S = 300.0  # start-up imports torch and loads a model: slow on a busy machine
KIB_PER_MIB = 1024


def bot_environment(discord: DiscordEmulator, model_dir: Path, db_path: Path,
                    **settings: str) -> dict[str, str]:
    """The environment of a bot process: the emulator's URLs and token, the model folder, the
    database, and `settings` (KEY="value") on top of the defaults."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(
        ("DISCORD_", "PYGBOT_"))}
    env.update({
        "DISCORD_TOKEN": discord.token,
        "DISCORD_API_URL": discord.base_url,
        "DISCORD_GATEWAY_URL": discord.gateway_url,
        "MODEL": str(model_dir),
        "DEVICE": "cpu",
        "DTYPE": "float32",
        "DB_PATH": str(db_path),
        "PERSONAS_DIR": str(REPO / "personas"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        # One torch thread: on a machine whose cores are shared, a spinning thread pool makes
        # a tiny model's generation tens of times slower, which would only measure contention.
        "OMP_NUM_THREADS": "1",
    })
    env.update(settings)
    return env


class BotProcess:
    """One `python bot.py` process at a time; `start()` again after it ended is a restart.

    Its log (stderr and stdout) accumulates in `log_path` across restarts.
    """

    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        self._env = dict(env)
        self.log_path = log_path
        self._process: asyncio.subprocess.Process | None = None
        self._log_start = 0  # where the current run's log begins
        self.peak_rss_kib = 0  # the largest VmHWM seen of any run (sampled, see `sample`)

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def start(self) -> None:
        if self.running:
            raise RuntimeError("the bot is already running")
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable, str(REPO / "bot.py"), "--env-file", os.devnull,
                cwd=REPO, env=self._env, stdin=asyncio.subprocess.DEVNULL, stdout=log,
                stderr=asyncio.subprocess.STDOUT)

    @property
    def ready(self) -> bool:
        """Running, connected and caught up: answering."""
        return self.running and READY_LINE in self.log()

    async def start_and_wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        await self.start()
        await self.wait_for_log(READY_LINE, timeout)

    def send_signal(self, signum: signal.Signals) -> None:
        assert self._process is not None
        self.sample()
        self._process.send_signal(signum)

    async def wait(self, timeout: float) -> int:
        """The exit status once the process ended (negative: the signal that ended it)."""
        assert self._process is not None
        return await asyncio.wait_for(self._process.wait(), timeout)

    async def kill(self) -> None:
        """SIGKILL, as the OOM killer or a power cut would; returns once it is gone."""
        if self.running:
            self.send_signal(signal.SIGKILL)
            await self.wait(30)

    def log(self) -> str:
        """This run's log so far."""
        with self.log_path.open("rb") as log:
            log.seek(self._log_start)
            return log.read().decode(errors="replace")

    async def wait_for_log(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if not self.running:
                raise AssertionError(f"the bot exited before logging {text!r}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the bot did not log {text!r} within {timeout}s")
            await asyncio.sleep(POLL_S)

    def sample(self) -> None:
        """Note the process's peak resident memory so far (Linux VmHWM)."""
        if not self.running:
            return
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.peak_rss_kib = max(self.peak_rss_kib, int(line.split()[1]))

    @property
    def peak_rss_mb(self) -> float:
        return self.peak_rss_kib / KIB_PER_MIB
