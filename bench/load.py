"""Nothing lost under load: mentions across many channels through a real `python bot.py`.

Starts the loopback Discord emulator (127.0.0.1 only) with one server of age-restricted
channels, builds the tiny test model, and runs `python bot.py` against it at default
settings: only the Discord URLs and token, the model folder and the database path are set
(and OMP_NUM_THREADS=1, which is no pygbot setting: on shared cores torch's spinning thread
pool would make even the tiny model's generation many times slower).
Members then mention the character, round robin over the channels at `--rate` per second;
`--kill-every N` SIGKILLs the bot once N mentions were sent since the last kill and it is up
and answering, and starts it again at once (mentions keep coming while it is down). When
every mention is answered (or `--timeout` passes) the bot is stopped with SIGTERM and what
members saw is counted:

- answered: mentions a reply covers (a reply answers its message and the earlier mentions
  of the channel that no reply covered yet: messages that arrived together get one reply);
- lost: mentions with neither a reply nor a notice;
- duplicates / order_violations: replies to an already answered / an older mention;
- p50_s / p99_s: seconds from a mention to the reply covering it (Discord's own timestamps);
- peak_rss_mb: the bot process's peak resident memory (the largest of all its runs).

    python bench/load.py --mentions 200 --channels 50
    python bench/load.py --mentions 200 --channels 50 --kill-every 50

Last line: RESULT answered=... lost=... duplicates=... order_violations=... p50_s=... p99_s=...
peak_rss_mb=...
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pygbot.intake import (  # noqa: E402
    BACKLOG_NOTICE,
    DATABASE_FAILED_NOTICE,
    EMPTY_REPLY_NOTICE,
    ENGINE_FAILED_NOTICE,
    MISSED_NOTICE,
)
from tests.bot_process import BotProcess, bot_environment  # noqa: E402
from tests.delivery import Delivery, account, covering_replies  # noqa: E402
from tests.discord_emulator import Channel, DiscordEmulator, User  # noqa: E402
from tests.discord_emulator.snowflake import TIMESTAMP_SHIFT  # noqa: E402
from tests.model_factory import build_tiny_model  # noqa: E402

MENTIONS_PER_MEMBER = 4  # stays inside the default per-member burst allowance (5)
SAMPLE_EVERY_S = 0.5
STOP_TIMEOUT_S = 60.0
MS_PER_S = 1000.0
STALL_S = 120.0  # give up when nothing new was answered for this long
NOTICES = (BACKLOG_NOTICE, DATABASE_FAILED_NOTICE, EMPTY_REPLY_NOTICE, ENGINE_FAILED_NOTICE,
           MISSED_NOTICE)


@dataclass
class World:
    channels: list[Channel]
    members: list[User]


@dataclass
class Sent:
    channel: Channel
    message_id: int


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mentions", type=int, default=200)
    parser.add_argument("--channels", type=int, default=50)
    parser.add_argument("--rate", type=float, default=5.0, help="mentions per second")
    parser.add_argument("--kill-every", type=int, default=0, metavar="N",
                        help="SIGKILL and restart the bot after every N mentions sent")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds to wait for the last answer")
    return parser.parse_args()


def build_world(discord: DiscordEmulator, channels: int, mentions: int) -> World:
    guild = discord.add_guild("Load Test")
    members = max(channels, math.ceil(mentions / MENTIONS_PER_MEMBER))
    return World(
        channels=[discord.add_text_channel(guild, f"roleplay-{n}", nsfw=True)
                  for n in range(channels)],
        members=[discord.add_member(guild, f"member{n}", f"Member {n}")
                 for n in range(members)])


async def sample_memory(bot: BotProcess) -> None:
    while True:
        bot.sample()
        await asyncio.sleep(SAMPLE_EVERY_S)


async def send_mentions(discord: DiscordEmulator, world: World, bot: BotProcess,
                        args: argparse.Namespace) -> list[Sent]:
    sent: list[Sent] = []
    pause = 1.0 / args.rate if args.rate > 0 else 0.0
    started = time.monotonic()
    since_kill = 0
    for index in range(args.mentions):
        channel = world.channels[index % len(world.channels)]
        member = world.members[index % len(world.members)]
        message = await discord.send_message(
            channel, member, f"{discord.bot_user.mention} message number {index}, over")
        sent.append(Sent(channel, int(message["id"])))
        since_kill += 1
        # Kill a bot that is answering, not one still starting: a restart takes a while.
        if args.kill_every and since_kill >= args.kill_every and bot.ready \
                and index + 1 < args.mentions:
            await bot.kill()
            print(f"  SIGKILL after {index + 1} mentions; restarting", flush=True)
            await bot.start()
            since_kill = 0
        await asyncio.sleep(max(0.0, started + (index + 1) * pause - time.monotonic()))
    return sent


def by_channel(sent: list[Sent]) -> dict[int, list[int]]:
    grouped: dict[int, list[int]] = {}
    for item in sent:
        grouped.setdefault(item.channel.id, []).append(item.message_id)
    return grouped


def tally(discord: DiscordEmulator, world: World, sent: list[Sent]) -> Delivery:
    grouped = by_channel(sent)
    total = Delivery()
    for channel in world.channels:
        total += account(discord.messages(channel), discord.bot_user.id,
                         set(grouped.get(channel.id, [])), NOTICES)
    return total


def latencies_s(discord: DiscordEmulator, world: World, sent: list[Sent]) -> list[float]:
    grouped = by_channel(sent)
    found: list[float] = []
    for channel in world.channels:
        covered = covering_replies(discord.messages(channel), discord.bot_user.id,
                                   set(grouped.get(channel.id, [])), NOTICES)
        found += [((reply >> TIMESTAMP_SHIFT) - (mention >> TIMESTAMP_SHIFT)) / MS_PER_S
                  for mention, reply in covered.items()]
    return found


async def wait_for_answers(discord: DiscordEmulator, world: World, sent: list[Sent],
                           timeout: float) -> None:
    deadline = time.monotonic() + timeout
    answered, progressed = -1, time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - progressed < STALL_S:
        delivery = tally(discord, world, sent)
        if delivery.answered == len(sent):
            return
        if delivery.answered != answered:
            answered, progressed = delivery.answered, time.monotonic()
        await asyncio.sleep(SAMPLE_EVERY_S)
    print(f"  gave up waiting: {answered} of {len(sent)} answered", flush=True)


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(share * 100) - 1]


async def run(args: argparse.Namespace, workdir: Path) -> str:
    model_dir = build_tiny_model(workdir / "tiny-model")
    async with DiscordEmulator() as discord:
        world = build_world(discord, args.channels, args.mentions)
        bot = BotProcess(bot_environment(discord, model_dir, workdir / "pygbot.sqlite3"),
                         workdir / "bot.log")
        await bot.start_and_wait_ready()
        sampler = asyncio.create_task(sample_memory(bot))
        started = time.monotonic()
        try:
            sent = await send_mentions(discord, world, bot, args)
            print(f"  sent {len(sent)} mentions in {time.monotonic() - started:.1f} s",
                  flush=True)
            await wait_for_answers(discord, world, sent, args.timeout)
            print(f"  done after {time.monotonic() - started:.1f} s", flush=True)
            bot.send_signal(signal.SIGTERM)  # after this nothing can be posted unseen
            status = await bot.wait(STOP_TIMEOUT_S)
        finally:
            sampler.cancel()
            await bot.kill()
        delivery = tally(discord, world, sent)
        waits = latencies_s(discord, world, sent)
    print(f"  bot exit status {status}; notices {delivery.notices}; log {bot.log_path}",
          flush=True)
    return (f"RESULT answered={delivery.answered} lost={delivery.lost} "
            f"duplicates={delivery.duplicates} order_violations={delivery.order_violations} "
            f"p50_s={percentile(waits, 0.50):.2f} p99_s={percentile(waits, 0.99):.2f} "
            f"peak_rss_mb={bot.peak_rss_mb:.0f}")


def main() -> None:
    args = parse_args()
    print(f"load: {args.mentions} mentions over {args.channels} channels at {args.rate}/s, "
          f"kill every {args.kill_every or 'never'}; tiny model, default settings", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="pygbot-load-"))  # kept: the bot's log is there
    print(asyncio.run(run(args, workdir)))


if __name__ == "__main__":
    main()
