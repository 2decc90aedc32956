"""Logging for a person watching the terminal: one line per event, pygbot's own voice first.

Third-party libraries add noise a pygbot admin cannot act on: discord.py warns on every start
that voice needs PyNaCl and davey (the bot never joins voice), and huggingface_hub and
transformers install handlers of their own, so each of their warnings would print twice
(once bare, once through ours). Here every library logs through the one root handler, and
the known-irrelevant warnings and per-request HTTP lines are shown only at LOG_LEVEL=DEBUG.
"""

from __future__ import annotations

import logging
import re
import sys

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Libraries whose own default handler would print each record a second time.
SELF_HANDLING_LIBRARIES = ("huggingface_hub", "transformers")
# HTTP clients that log every request at INFO (huggingface_hub's httpx2 does): DEBUG detail.
CHATTY_LIBRARIES = ("httpx", "httpx2", "httpcore")
# (logger name, text in the message) of warnings about features pygbot never uses.
IRRELEVANT_WARNINGS = (
    ("discord.client", "voice will NOT be supported"),  # PyNaCl / davey: voice only
)


# discord.py logs each webhook and interaction request's URL at DEBUG, and the URL holds the
# token: a channel webhook's token lets anyone post in that channel, for as long as it exists.
_URL_TOKEN = re.compile(r"(/(?:webhooks|interactions)/\d+/)[^/?\s'\"]+")


class SecretUrls(logging.Filter):
    """Replaces the tokens in webhook and interaction URLs with `<token>`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("discord"):
            message = record.getMessage()
            if "/webhooks/" in message or "/interactions/" in message:
                record.msg, record.args = _URL_TOKEN.sub(r"\1<token>", message), None
        return True


class IrrelevantWarnings(logging.Filter):
    """Drops the warnings listed in IRRELEVANT_WARNINGS."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(record.name == name and text in record.getMessage()
                       for name, text in IRRELEVANT_WARNINGS)


def configure(level: str, libraries: bool = True) -> None:
    """Log to stderr at `level`; at DEBUG nothing is hidden. `libraries=False` leaves the
    Hub's and transformers' loggers alone (importing them takes a second or two)."""
    logging.basicConfig(level=level, stream=sys.stderr, format=LOG_FORMAT, force=True)
    for handler in logging.getLogger().handlers:
        handler.addFilter(SecretUrls())  # at every level, DEBUG included
    if logging.getLevelName(level) > logging.DEBUG:
        for handler in logging.getLogger().handlers:
            handler.addFilter(IrrelevantWarnings())
        for name in CHATTY_LIBRARIES:
            logging.getLogger(name).setLevel(logging.WARNING)
    for name in SELF_HANDLING_LIBRARIES if libraries else ():
        _adopt(name)


def _adopt(name: str) -> None:
    """Route a library's records through the root handler only.

    huggingface_hub and transformers attach a handler to their root logger the first time
    they log; making them configure it now, then removing it, leaves propagation to ours.
    """
    if name == "huggingface_hub":
        from huggingface_hub.utils import logging as library  # noqa: PLC0415 (optional import)
    else:
        from transformers.utils import logging as library  # type: ignore[no-redef]  # noqa: PLC0415
    library.get_logger()  # runs the library's one-time handler setup
    logger = logging.getLogger(name)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.propagate = True
