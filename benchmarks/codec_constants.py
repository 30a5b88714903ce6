"""What a permuted LabelCodec costs a compiled program, and the JAX switch.

A codec with a label -> code permutation (``head.label_order`` random or
clustered) keeps the permutation and its inverse as numpy arrays; under
``jax.jit`` JAX embeds such closed-over arrays in the program as constants,
4 bytes per label each. With JAX's ``jax_use_simplified_jaxpr_constants``
switched on (environment variable ``JAX_USE_SIMPLIFIED_JAXPR_CONSTANTS=1``,
read when JAX starts: each mode runs in its own process here), they are
passed to the executable as arguments instead. This measures, for
``product_topk`` (the inverse table) on a 2-head codec: the lowered
program's text size, lower + compile time, the executable's argument bytes
and the time of one call, in both modes.

  python benchmarks/codec_constants.py                         # 10^5 .. 10^7
  python benchmarks/codec_constants.py --classes=100000000     # ~3 GB of RAM
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import subprocess
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from mhe_jax import ops

_CLASSES = flags.DEFINE_list("classes", ["100000", "1000000", "10000000"],
                             "Numbers of labels C.")
_BATCH = flags.DEFINE_integer("batch", 8, "Examples per call.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls (median).")
_WORKER = flags.DEFINE_bool(
    "worker", False, "Internal: measure in this process's mode, print JSON.")
_OUT = flags.DEFINE_string(
    "out", str(pathlib.Path(__file__).parent / "results" /
               "codec_constants.json"), "JSON results.")

ENV = "JAX_USE_SIMPLIFIED_JAXPR_CONSTANTS"


def measure(codec: ops.LabelCodec) -> dict:
  as_arguments = bool(jax.config.jax_use_simplified_jaxpr_constants)
  logits = [jnp.asarray(np.random.default_rng(h).normal(size=(_BATCH.value, r)),
                        jnp.float32) for h, r in enumerate(codec.radices)]
  fn = jax.jit(lambda head_logits: ops.product_topk(head_logits, 5, codec))
  t0 = time.perf_counter()
  lowered = fn.lower(logits)
  text_bytes = len(lowered.as_text())
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  jax.block_until_ready(fn(logits))
  times = []
  for _ in range(_REPEATS.value):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(logits))
    times.append(time.perf_counter() - t0)
  return {"C": codec.num_classes, "radices": list(codec.radices),
          "tables": "arguments" if as_arguments else "constants",
          "program_text_mb": text_bytes / 1e6,
          "lower_compile_s": compile_s,
          "argument_mb": compiled.memory_analysis().argument_size_in_bytes / 1e6,
          "call_ms": 1e3 * float(np.median(times))}


def worker() -> list[dict]:
  rows = []
  for c in map(int, _CLASSES.value):
    perm = np.random.default_rng(0).permutation(c)
    rows.append(measure(ops.LabelCodec.balanced(c, 2).with_permutation(perm)))
  return rows


def main(argv):
  del argv
  if _WORKER.value:
    print(json.dumps(worker()))
    return
  runs = {}
  for value in ("0", "1"):
    proc = subprocess.run(
        [sys.executable, __file__, "--worker",
         f"--classes={','.join(_CLASSES.value)}", f"--batch={_BATCH.value}",
         f"--repeats={_REPEATS.value}"],
        env={**os.environ, ENV: value}, capture_output=True, text=True,
        check=True)
    runs[value] = json.loads(proc.stdout.strip().splitlines()[-1])
  rows = [r for pair in zip(runs["0"], runs["1"]) for r in pair]
  print("| C | tables | program text MB | lower+compile s | argument MB | "
        "call ms |\n|---|---|---|---|---|---|")
  for row in rows:
    print(f"| {row['C']:.0e} | {row['tables']} | "
          f"{row['program_text_mb']:.2f} | {row['lower_compile_s']:.2f} | "
          f"{row['argument_mb']:.1f} | {row['call_ms']:.2f} |")
  out = pathlib.Path(_OUT.value)
  out.write_text(json.dumps({
      "machine": f"{platform.machine()} {jax.devices()[0].device_kind}",
      "jax": jax.__version__, "batch": _BATCH.value, "rows": rows}, indent=1))
  print(f"wrote {out}")


if __name__ == "__main__":
  app.run(main)
