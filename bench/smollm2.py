"""SmolLM2-135M-Instruct as a plain Hugging Face folder, for benchmarks that need real text.

The conversion lives in `pygbot.standin` (it is also `python bot.py --try`'s stand-in model);
the bench keeps its own cache folder next to it.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from pygbot.standin import stand_in_folder

DEFAULT_CACHE = Path(__file__).resolve().parent / ".cache"


def model_folder(cache: Path = DEFAULT_CACHE) -> Path:
    """A plain HF folder with SmolLM2-135M-Instruct, converted from GGUF on first use."""
    return stand_in_folder(cache)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(model_folder(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_CACHE))
