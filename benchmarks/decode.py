"""Decode benchmark: features -> top-k labels, vanilla classifier vs MHE heads.

End to end from features ``x [B, d]`` (B=256, d=512) to the top-k labels:

* ``vanilla``: one ``[d, C]`` matmul then ``jax.lax.top_k`` over C logits.
* ``vanilla-stream``: the same scores computed in class chunks inside a
  ``lax.scan`` that keeps a running top-k, so the ``[B, C]`` logits are never
  alive at once (what a careful user does for large C).
* ``mhe-H``: H small matmuls (one fused ``[d, sum(r)]``) then
  :func:`mhe_jax.ops.product_topk` (exact, never materialises C scores).

For each (method, C, k) it prints and records the median wall time over
repeats (after a compile/warm-up call), the ratio to the best vanilla time,
and the compiled memory (arguments + outputs + XLA temporaries, from
``Compiled.memory_analysis()``). Vanilla runs while its ``[d, C]`` float32
weight plus the logits fit in ``--memory_budget_gb``.

  python benchmarks/decode.py                       # full table -> JSON
  python benchmarks/decode.py --classes=10000 --ks=5 --repeats=3   # quick
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import platform
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from mhe_jax import LabelCodec
from mhe_jax import ops

_CLASSES = flags.DEFINE_list(
    "classes", ["1e4", "1e5", "1e6", "1e7", "1e8"], "Class counts C.")
_HEADS = flags.DEFINE_list("heads", ["2", "3"], "Numbers of MHE heads H.")
_KS = flags.DEFINE_list("ks", ["1", "5", "100"], "Values of k.")
_BATCH = flags.DEFINE_integer("batch", 256, "Examples per call.")
_DIM = flags.DEFINE_integer("dim", 512, "Feature dimension d.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per setting.")
_CHUNK = flags.DEFINE_integer("chunk", 65536, "Class chunk of vanilla-stream.")
_BUDGET = flags.DEFINE_float(
    "memory_budget_gb", 12.0, "Run vanilla only while weight + logits fit.")
_MARKDOWN_FROM = flags.DEFINE_string(
    "markdown_from", None, "Only print the README table of a results JSON.")
_OUT = flags.DEFINE_string(
    "out", str(pathlib.Path(__file__).parent / "results" / "decode.json"),
    "Where to write the JSON results.")


def vanilla_topk(x, w, k):
  return jax.lax.top_k(x @ w, k)


def vanilla_stream_topk(x, w_chunks, k, num_classes):
  """Running top-k over class chunks; w_chunks is [n, d, chunk] (padded)."""
  n, _, chunk = w_chunks.shape
  b = x.shape[0]
  kk = min(k, chunk)

  def body(carry, inputs):
    best_s, best_l = carry
    i, w = inputs
    logits = x @ w
    ids = i * chunk + jnp.arange(chunk, dtype=jnp.int32)
    logits = jnp.where(ids < num_classes, logits, -jnp.inf)
    s, idx = jax.lax.top_k(logits, kk)
    s = jnp.concatenate([best_s, s], axis=1)
    l = jnp.concatenate([best_l, i * chunk + idx.astype(jnp.int32)], axis=1)
    s, pos = jax.lax.top_k(s, k)
    return (s, jnp.take_along_axis(l, pos, axis=1)), None

  init = (jnp.full((b, k), -jnp.inf), jnp.full((b, k), -1, jnp.int32))
  (s, l), _ = jax.lax.scan(body, init, (jnp.arange(n, dtype=jnp.int32), w_chunks))
  return s, l


def mhe_topk(x, w, b, k, codec):
  return ops.product_topk(codec.split(x @ w + b), k, codec)


def measure(fn, *args):
  """(median seconds, compiled bytes) of a jitted fn."""
  compiled = jax.jit(fn).lower(*args).compile()
  mem = compiled.memory_analysis()
  mem_bytes = None
  if mem is not None:
    mem_bytes = int(mem.argument_size_in_bytes + mem.output_size_in_bytes +
                    mem.temp_size_in_bytes)
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(_REPEATS.value):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t0)
  return float(np.median(times)), mem_bytes


def fmt_bytes(n):
  if n is None:
    return "-"
  for unit in ("B", "KB", "MB", "GB"):
    if n < 1024 or unit == "GB":
      return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
    n /= 1024


def markdown_table(results: dict) -> str:
  """The README table: best vanilla vs each MHE H, per (C, k)."""
  rows = results["rows"]
  heads = sorted({r["method"] for r in rows if r["method"].startswith("mhe-")})
  keys = sorted({(r["num_classes"], r["k"]) for r in rows if r["k"]})
  head = "| C | k | vanilla ms (best of dense, stream) | " + " | ".join(
      f"{h} ms (speed-up)" for h in heads) + " | vanilla memory | " + " | ".join(
          f"{h} memory" for h in heads) + " |"
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  for c, k in keys:
    van = [r for r in rows if r["method"].startswith("vanilla")
           and r["num_classes"] == c and r["k"] == k]
    nofit = [r for r in rows if r["method"] == "vanilla"
             and r["num_classes"] == c and r.get("note")]
    if van:
      best = min(van, key=lambda r: r["seconds"])
      van_ms = f"{best['seconds'] * 1e3:,.1f}"
      van_mem = fmt_bytes(min(r["memory_bytes"] for r in van))
    else:
      van_ms, van_mem = "does not fit", nofit[0]["note"] if nofit else "-"
    cells, mems = [], []
    for h in heads:
      r = [r for r in rows if r["method"] == h and r["num_classes"] == c
           and r["k"] == k]
      if not r:
        cells.append("-")
        mems.append("-")
        continue
      r = r[0]
      sp = r.get("speedup_vs_vanilla")
      cells.append(f"{r['seconds'] * 1e3:,.2f}" +
                   (f" ({sp:,.0f}x)" if sp else ""))
      mems.append(fmt_bytes(r["memory_bytes"]))
    lines.append(f"| {c:.0e} | {k} | {van_ms} | " + " | ".join(cells) +
                 f" | {van_mem} | " + " | ".join(mems) + " |")
  return "\n".join(lines)


def main(argv):
  del argv
  if _MARKDOWN_FROM.value:
    print(markdown_table(json.loads(pathlib.Path(_MARKDOWN_FROM.value).read_text())))
    return
  batch, dim = _BATCH.value, _DIM.value
  classes = [int(float(c)) for c in _CLASSES.value]
  heads = [int(h) for h in _HEADS.value]
  ks = [int(k) for k in _KS.value]
  key = jax.random.key(0)
  x = jax.random.normal(key, (batch, dim), jnp.float32)
  rows = []
  print(f"{'method':<15}{'C':>12}{'k':>5}{'median ms':>12}{'vs vanilla':>12}"
        f"{'memory':>12}  note")
  for c in classes:
    vanilla_best = {}
    weight_bytes = 4 * dim * c
    fits = weight_bytes + 4 * batch * c * 2 <= _BUDGET.value * 2**30
    if fits:
      w = jax.random.normal(jax.random.fold_in(key, c), (dim, c)) / dim**0.5
      chunk = min(_CHUNK.value, c)
      n = -(-c // chunk)
      w_chunks = jnp.pad(w, ((0, 0), (0, n * chunk - c)))
      w_chunks = w_chunks.reshape(dim, n, chunk).transpose(1, 0, 2)
      for k in ks:
        for name, fn, args in (
            ("vanilla", functools.partial(vanilla_topk, k=k), (x, w)),
            ("vanilla-stream", functools.partial(
                vanilla_stream_topk, k=k, num_classes=c), (x, w_chunks))):
          sec, mem = measure(fn, *args)
          vanilla_best[k] = min(vanilla_best.get(k, np.inf), sec)
          rows.append(dict(method=name, num_classes=c, k=k, seconds=sec,
                           memory_bytes=mem))
          print(f"{name:<15}{c:>12,}{k:>5}{sec * 1e3:>12.2f}{'':>12}"
                f"{fmt_bytes(mem):>12}")
      del w, w_chunks
    else:
      rows.append(dict(method="vanilla", num_classes=c, k=None, seconds=None,
                       memory_bytes=weight_bytes,
                       note=f"does not fit: weight alone {fmt_bytes(weight_bytes)}"))
      print(f"{'vanilla':<15}{c:>12,}{'':>5}{'-':>12}{'':>12}{'-':>12}  "
            f"does not fit ({fmt_bytes(weight_bytes)} weight)")
    for h in heads:
      codec = LabelCodec.balanced(c, h)
      w = jax.random.normal(jax.random.fold_in(key, c + h),
                            (dim, codec.total_outputs)) / dim**0.5
      b = jnp.zeros((codec.total_outputs,))
      for k in ks:
        if k > c:
          continue
        sec, mem = measure(functools.partial(mhe_topk, k=k, codec=codec),
                           x, w, b)
        ratio = vanilla_best.get(k, np.nan) / sec
        rows.append(dict(method=f"mhe-{h}", num_classes=c, k=k, seconds=sec,
                         memory_bytes=mem, radices=list(codec.radices),
                         speedup_vs_vanilla=None if np.isnan(ratio) else ratio))
        ratio_s = "-" if np.isnan(ratio) else f"{ratio:,.1f}x"
        print(f"{'mhe-' + str(h):<15}{c:>12,}{k:>5}{sec * 1e3:>12.2f}"
              f"{ratio_s:>12}{fmt_bytes(mem):>12}  radices={codec.radices}")
  out = pathlib.Path(_OUT.value)
  out.parent.mkdir(parents=True, exist_ok=True)
  meta = dict(benchmark="decode", batch=batch, dim=dim, repeats=_REPEATS.value,
              chunk=_CHUNK.value, jax=jax.__version__,
              devices=[str(d) for d in jax.devices()],
              cpu_count=os.cpu_count(), machine=platform.machine(),
              processor=platform.processor(), time=time.strftime("%Y-%m-%d %H:%M"))
  out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
  print(markdown_table(dict(meta=meta, rows=rows)))
  print(f"wrote {out}")


if __name__ == "__main__":
  app.run(main)
