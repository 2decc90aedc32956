"""Memory and speed of a Pygmalion-1.3B-sized model on this machine, bfloat16 vs float32.

Builds a GPT-NeoX with pythia-1.3b's exact shape (random weights: the size and speed are
what matter here, not the words), then, side by side in one run, loads it through pygbot's
own `Engine.load` in a fresh process per dtype and measures:
- resident memory after one reply to a ~1800-token prompt (weights are memory-mapped, so
  they count only once a reply has touched them), and the peak during it;
- seconds for that reply (prefill of the long prompt plus 32 new tokens).

    python bench/memory.py            # builds the model once into bench/.cache (about 3 GB)

Last line: RESULT bf16_resident_gib=... fp32_resident_gib=... memory_ratio=... speed_ratio=...
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pygbot.engine import Engine, GenerationParams, GenerationRequest  # noqa: E402
from tests.model_factory import build_pythia_shaped_model  # noqa: E402

CACHE = REPO / "bench" / ".cache"
PROMPT_TOKENS = 1800
NEW_TOKENS = 32
GIB = 1024**3
DTYPES = ("bfloat16", "float32")


def resident_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def measure(model_dir: Path, dtype: str) -> dict[str, float]:
    """Runs in a fresh process, so the numbers are this dtype's alone."""
    baseline = resident_bytes()
    started = time.perf_counter()
    engine = Engine.load(str(model_dir), device="cpu", dtype=dtype)
    load_seconds = time.perf_counter() - started
    prompt = " ".join(["the ship drifts past the rings"] * 400)
    while engine.count_tokens(prompt) > PROMPT_TOKENS:
        prompt = prompt[: int(len(prompt) * 0.95)]
    request = GenerationRequest(prompt=prompt, params=GenerationParams(
        max_new_tokens=NEW_TOKENS, temperature=0.0, repetition_penalty=1.0))
    started = time.perf_counter()
    [result] = engine.generate([request])
    reply_seconds = time.perf_counter() - started
    return {
        "resident_gib": (resident_bytes() - baseline) / GIB,
        "peak_gib": (peak_bytes() - baseline) / GIB,
        "load_seconds": load_seconds,
        "reply_seconds": reply_seconds,
        "prompt_tokens": engine.count_tokens(prompt),
        "new_tokens": result.new_tokens,
    }


def build_model() -> Path:
    model_dir = CACHE / "pythia-1.3b-shape"
    if not (model_dir / "config.json").exists():
        print(f"building a pythia-1.3b-shaped model in {model_dir} (once) ...", flush=True)
        build_pythia_shaped_model(model_dir, dtype="bfloat16")
    return model_dir


def run_child(model_dir: Path, dtype: str) -> dict[str, float]:
    output = subprocess.run(
        [sys.executable, __file__, "--child", str(model_dir), dtype],
        capture_output=True, text=True, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return json.loads(output.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", nargs=2, metavar=("MODEL_DIR", "DTYPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(Path(args.child[0]), args.child[1])))
        return
    model_dir = build_model()
    results = {dtype: run_child(model_dir, dtype) for dtype in DTYPES}
    print(f"\n{'':24}{'bfloat16':>12}{'float32':>12}{'bf16/fp32':>12}")
    for key, label in (("resident_gib", "RSS after reply (GiB)"), ("peak_gib", "peak RSS (GiB)"),
                       ("load_seconds", "load (s)"), ("reply_seconds", "reply (s)")):
        low, full = results["bfloat16"][key], results["float32"][key]
        print(f"{label:24}{low:12.2f}{full:12.2f}{low / full:12.2f}")
    bf16, fp32 = results["bfloat16"], results["float32"]
    print(f"reply = {bf16['prompt_tokens']:.0f}-token prompt + {bf16['new_tokens']:.0f} new tokens,"
          f" {os.cpu_count()} CPU cores")
    print(f"RESULT bf16_resident_gib={bf16['resident_gib']:.2f} "
          f"fp32_resident_gib={fp32['resident_gib']:.2f} "
          f"bf16_peak_gib={bf16['peak_gib']:.2f} fp32_peak_gib={fp32['peak_gib']:.2f} "
          f"memory_ratio={bf16['peak_gib'] / fp32['peak_gib']:.2f} "
          f"bf16_reply_s={bf16['reply_seconds']:.1f} fp32_reply_s={fp32['reply_seconds']:.1f} "
          f"speed_ratio={fp32['reply_seconds'] / bf16['reply_seconds']:.2f}")


if __name__ == "__main__":
    main()
