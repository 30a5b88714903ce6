"""Heads benchmark: train-step time, parameters and memory against C.

For each head (vanilla, mhp, mhc, mhs) and class count C, one jitted train
step of the head alone on features ``x [B, d]`` (B=256, d=512): forward,
backward and an adam update, with donated state. Prints a table and writes
JSON: median step time over repeats (after compilation), parameter count,
and the compiled memory (arguments + outputs + XLA temporaries from
``Compiled.memory_analysis()``, i.e. parameters, adam state, batch and
everything alive inside the step). A head runs only while its parameters plus
gradients and adam state (4x the parameter bytes) fit ``--memory_budget_gb``.

  python benchmarks/heads.py                      # C in 1e4..1e7 -> JSON
  python benchmarks/heads.py --classes=1e4 --repeats=3   # quick check
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import time

from absl import app
from absl import flags
from flax import nnx
import jax
import numpy as np
import optax

from mhe_jax import LabelCodec
from mhe_jax.nn import heads as heads_lib

_CLASSES = flags.DEFINE_list("classes", ["1e4", "1e5", "1e6", "1e7", "1e8"],
                             "Class counts C.")
_HEADS = flags.DEFINE_list("heads", ["vanilla", "mhp", "mhc", "mhs"],
                           "Heads to run.")
_NUM_HEADS = flags.DEFINE_integer("num_heads", 2, "H for the MHE heads.")
_BATCH = flags.DEFINE_integer("batch", 256, "Batch size B.")
_DIM = flags.DEFINE_integer("dim", 512, "Feature dimension d.")
_BEAM = flags.DEFINE_integer("beam", 16, "MHC beam.")
_HIDDEN = flags.DEFINE_integer("hidden", 64, "MHC hidden size.")
_SAMPLED = flags.DEFINE_integer("sampled_groups", 512, "MHS groups per step.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed steps per setting.")
_BUDGET = flags.DEFINE_float("memory_budget_gb", 16.0,
                             "Skip a head whose 4x parameter bytes exceed it.")
_MARKDOWN_FROM = flags.DEFINE_string(
    "markdown_from", None, "Only print the README table of a results JSON.")
_OUT = flags.DEFINE_string(
    "out", str(pathlib.Path(__file__).parent / "results" / "heads.json"),
    "Where to write the JSON results.")


def make_head(name: str, num_classes: int, rngs: nnx.Rngs):
  dim = _DIM.value
  if name == "vanilla":
    return heads_lib.VanillaHead(dim, num_classes, rngs=rngs)
  codec = LabelCodec.balanced(num_classes, _NUM_HEADS.value)
  if name == "mhp":
    return heads_lib.MHPHead(dim, codec, rngs=rngs)
  if name == "mhc":
    return heads_lib.MHCHead(dim, codec, beam=_BEAM.value,
                             hidden=_HIDDEN.value, rngs=rngs)
  if name == "mhs":
    return heads_lib.MHSHead(dim, codec, _SAMPLED.value, rngs=rngs)
  raise ValueError(f"unknown head {name!r}")


def param_count(name: str, num_classes: int) -> int:
  """Parameters of a head, from its abstract shapes (nothing allocated)."""
  abstract = nnx.eval_shape(lambda: make_head(name, num_classes, nnx.Rngs(0)))
  params = nnx.state(abstract, nnx.Param)
  return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))


def create(name: str, num_classes: int):
  """The head and its adam optimiser (call under nnx.eval_shape to size it)."""
  head = make_head(name, num_classes, nnx.Rngs(0))
  return head, nnx.Optimizer(head, optax.adam(1e-3), wrt=nnx.Param)


def memory_stats(compiled) -> dict[str, int] | None:
  """Byte counts of a compiled program (``Compiled.memory_analysis()``).

  ``memory_bytes`` = arguments + outputs + temporaries (donated state counted
  twice, as in heads.json); ``live_bytes`` = the same minus the aliased
  (donated) outputs, i.e. what the step needs alive at once.
  """
  mem = compiled.memory_analysis()
  if mem is None:
    return None
  total = (mem.argument_size_in_bytes + mem.output_size_in_bytes +
           mem.temp_size_in_bytes)
  return dict(memory_bytes=int(total),
              live_bytes=int(total - mem.alias_size_in_bytes),
              argument_bytes=int(mem.argument_size_in_bytes),
              output_bytes=int(mem.output_size_in_bytes),
              alias_bytes=int(mem.alias_size_in_bytes),
              temp_bytes=int(mem.temp_size_in_bytes))


def compile_step(name: str, num_classes: int):
  """Compiles the train step from abstract shapes (nothing is allocated).

  Returns ``(compiled, init, graphdef)``: ``compiled(state, x, y, rng) ->
  (state, loss)`` donates ``state``; ``init()`` materialises the state;
  ``nnx.merge(graphdef, state)`` gives back ``(head, optimizer)``.
  """
  abstract = nnx.eval_shape(lambda: create(name, num_classes))
  graphdef, abstract_state = nnx.split(abstract)

  def step(state, x, y, rng):
    head, optimizer = nnx.merge(graphdef, state)
    loss, grads = nnx.value_and_grad(lambda h: h.loss(x, y, rng=rng))(head)
    optimizer.update(head, grads)
    return nnx.state((head, optimizer)), loss

  x, y, key = jax.eval_shape(inputs, num_classes)
  compiled = jax.jit(step, donate_argnums=0).lower(
      abstract_state, x, y, key).compile()
  init = jax.jit(lambda: nnx.split(create(name, num_classes))[1])
  return compiled, init, graphdef


def inputs(num_classes: int):
  """Features ``x [B, d]``, labels ``y [B]`` and an rng key."""
  key = jax.random.key(1)
  x = jax.random.normal(key, (_BATCH.value, _DIM.value))
  y = jax.random.randint(jax.random.fold_in(key, 1), (_BATCH.value,), 0,
                         num_classes)
  return x, y, key


def median_seconds(fn, repeats: int) -> float:
  """Median wall time of ``fn(i)`` (which must block) over ``repeats`` calls."""
  times = []
  for i in range(repeats):
    t0 = time.perf_counter()
    fn(i)
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def run_steps(compiled, state, num_classes: int, repeats: int):
  """One warm-up step, then the median of ``repeats`` timed steps.

  Returns ``(seconds, loss, state)`` (``state`` is donated and replaced).
  """
  x, y, key = inputs(num_classes)
  state, loss = compiled(state, x, y, key)
  jax.block_until_ready(loss)
  out = [state, loss]

  def one(i):
    out[0], out[1] = compiled(out[0], x, y, jax.random.fold_in(key, i))
    jax.block_until_ready(out[1])

  seconds = median_seconds(one, repeats)
  return seconds, float(out[1]), out[0]


def bench(name: str, num_classes: int):
  compiled, init, _ = compile_step(name, num_classes)
  mem = memory_stats(compiled)
  sec, loss, _ = run_steps(compiled, init(), num_classes, _REPEATS.value)
  return sec, None if mem is None else mem["memory_bytes"], loss


def markdown_table(results: dict) -> str:
  """One row per C: each head's step time, parameters and memory."""
  rows = results["rows"]
  heads = list(dict.fromkeys(r["head"] for r in rows))
  lines = ["| C | " + " | ".join(f"{h} step ms / params / memory" for h in heads)
           + " |", "|---|" + "---|" * len(heads)]
  for c in sorted({r["num_classes"] for r in rows}):
    cells = []
    for h in heads:
      r = next((r for r in rows if r["head"] == h and r["num_classes"] == c),
               None)
      if r is None:
        cells.append("-")
      elif r["seconds"] is None:
        cells.append(f"does not fit ({r['params'] / 1e6:,.0f}M params)")
      else:
        cells.append(f"{r['seconds'] * 1e3:,.1f} / {r['params'] / 1e6:,.2f}M / "
                     f"{(r['memory_bytes'] or 0) / 2**30:,.3f} GB")
    lines.append(f"| {c:.0e} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv):
  del argv
  if _MARKDOWN_FROM.value:
    print(markdown_table(json.loads(pathlib.Path(_MARKDOWN_FROM.value).read_text())))
    return
  rows = []
  print(f"{'head':<9}{'C':>13}{'params':>15}{'step ms':>11}{'memory GB':>11}"
        "  note")
  for c in [int(float(c)) for c in _CLASSES.value]:
    for name in _HEADS.value:
      n = param_count(name, c)
      if 4 * 4 * n > _BUDGET.value * 2**30:
        note = (f"does not fit: params+grads+adam {16 * n / 2**30:.1f} GB > "
                f"{_BUDGET.value} GB")
        rows.append(dict(head=name, num_classes=c, params=n, seconds=None,
                         memory_bytes=None, note=note))
        print(f"{name:<9}{c:>13,}{n:>15,}{'-':>11}{'-':>11}  {note}")
        continue
      sec, mem, loss = bench(name, c)
      rows.append(dict(head=name, num_classes=c, params=n, seconds=sec,
                       memory_bytes=mem, loss=loss))
      print(f"{name:<9}{c:>13,}{n:>15,}{sec * 1e3:>11.2f}"
            f"{(mem or 0) / 2**30:>11.3f}")
  meta = dict(benchmark="heads", batch=_BATCH.value, dim=_DIM.value,
              num_heads=_NUM_HEADS.value, beam=_BEAM.value,
              hidden=_HIDDEN.value, sampled_groups=_SAMPLED.value,
              repeats=_REPEATS.value, jax=jax.__version__,
              devices=[str(d) for d in jax.devices()],
              cpu_count=os.cpu_count(), machine=platform.machine(),
              time=time.strftime("%Y-%m-%d %H:%M"))
  out = pathlib.Path(_OUT.value)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
  print(f"wrote {out}")


if __name__ == "__main__":
  app.run(main)
