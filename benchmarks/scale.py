"""Scale benchmark: train-step time, memory and inference throughput against C.

Extends ``benchmarks/heads.py`` (same heads, same jitted train step of the
head alone on synthetic features ``x [B, d]`` with random labels: forward,
backward and an optimiser update with the state donated; its flags
``--batch``, ``--dim``, ``--num_heads``, ``--beam``, ``--hidden``,
``--sampled_groups``, ``--repeats`` apply, with this benchmark's defaults
B=64, d=256) to C from 10^4 to 10^8 and adds, per (head, C) point:

* ``seconds``: median of ``--repeats`` train steps after compilation and one
  warm-up step (a warm-up step over ``--max_step_seconds`` is reported
  alone, and that head's larger C are skipped).
* Memory, two ways. ``live_bytes``: the compiled step's
  ``memory_analysis()`` arguments + outputs - donated (aliased) outputs +
  XLA temporaries, i.e. parameters, optimiser state, gradients, batch and
  everything alive inside the step (``memory_bytes`` counts the donated
  state twice, as argument and as output). ``rss_peak_bytes``: the
  process's resident-set high-water mark (``getrusage`` ``ru_maxrss``) at
  the end of the point, which runs in its own subprocess; ``rss_base_bytes``
  is the same mark just before the head is created (the JAX runtime).
  Parameters are drawn with the rbg PRNG, so the initialisation holds no
  kernel-sized temporaries and the RSS peak is the step's (threefry, on
  CPU, holds three).
* ``infer_examples_per_second``: batch / median time of the jitted
  ``head.topk(x, 5)`` (features to the top-5 labels; vanilla scores all C
  classes in chunks, MHP decodes the exact product top-k, MHC its beam, MHS
  the full classifier), run once the optimiser state is freed.

Rows (``_VARIANTS`` beside heads.py's ``vanilla``, ``mhp``, ``mhc``, ``mhs``,
which train with adam in float32):

* ``vanilla_momentum``: SGD with momentum 0.9 (one state table instead of
  adam's two; Renee's classifier optimiser, ``optimizer.classifier=
  'sgd_momentum'`` in the trainer); ``vanilla_sgd``: plain SGD, no state
  (``'sgd'``). ``vanilla_bf16`` / ``vanilla_bf16_momentum``: bfloat16
  parameters, optimiser state and matmuls, float32 logits, losses and
  accumulation.
* ``mhs_dense``: MHS sampling ``--sparse_groups`` groups with the dense adam
  update of the whole classifier; ``mhs_sparse``: the same sample, only the
  sampled rows and their state updated (lazy Adam,
  :class:`mhe_jax.nn.mhs.SparseUpdateOptimizer`); ``mhs_sparse_momentum``:
  lazy momentum SGD; ``mhs_sparse_sgd``: plain SGD (no state; the sparse
  step is the dense SGD step exactly). ``mhs_sparse_bf16_momentum`` (not
  run by default): bfloat16 parameters and trace, which XLA:CPU cannot
  scatter in place (see :mod:`mhe_jax.ops.sparse_update`).

A step samples ``max(budget, B)`` groups (every batch label's group must
fit), so the default B=64 with 64 groups is the smallest budget a batch
allows. The second table printed (:func:`comparison_table`) names, per C,
the fastest vanilla row and the leanest (least compiled memory), and each
MHE row's speed-up over the fastest and its memory as a fraction of the
fastest's and of the leanest's.

Each point first compiles the train step from abstract shapes (nothing
allocated) and is skipped, with its compiled memory and the reason, when
``live_bytes`` exceeds ``--memory_budget_gb``; such a point is marked "does
not fit" when it also exceeds ``--machine_memory_gb`` (this machine's RAM).
``--merge`` adds the rows run to the ``--out`` JSON, replacing rows of the
same head, C and batch and keeping the rest (a row of another batch than
the file's is labelled with it, e.g. ``mhs_sparse B=256``). Writes JSON and
a log-log PNG (train-step time, memory and inference throughput against C,
one line per head).

  python benchmarks/scale.py --classes=1e4,3e4,1e5,3e5     # then --merge:
  python benchmarks/scale.py --classes=1e6 --merge
  python benchmarks/scale.py --classes=3e6,1e7 --merge
  python benchmarks/scale.py --classes=3e7,1e8 --merge
  python benchmarks/scale.py --markdown_from=benchmarks/results/scale.json
  python benchmarks/scale.py --plot_from=benchmarks/results/scale.json
  python benchmarks/scale.py --classes=1e4 --repeats=1 --out=/tmp/s.json
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import resource
import subprocess
import sys
import time

from absl import app
from absl import flags
from flax import nnx
import jax
import jax.numpy as jnp
import optax

import heads as heads_lib  # benchmarks/heads.py (this directory is on sys.path)
from mhe_jax import LabelCodec
from mhe_jax.nn.mhs import MHSHead
from mhe_jax.nn.mhs import SparseUpdateOptimizer
from mhe_jax.nn.vanilla import VanillaHead

FLAGS = flags.FLAGS
# Parameters and inputs are drawn with the rbg PRNG (XLA's RngBitGenerator):
# on CPU, threefry's draw of a [d, C] kernel holds three more kernel-sized
# temporaries, which would make a point's RSS peak its initialisation's
# rather than its step's.
jax.config.update("jax_default_prng_impl", "rbg")
RESULTS = pathlib.Path(__file__).resolve().parent / "results"
GB = 2**30

_TOP_K = flags.DEFINE_integer("top_k", 5, "k of the inference top-k.")
_MACHINE_GB = flags.DEFINE_float(
    "machine_memory_gb", 24.0, "This machine's RAM: a point whose compiled "
    "memory exceeds it is reported as 'does not fit'.")
_POINT = flags.DEFINE_string(
    "point", None, "Internal: run one HEAD:C point and print its JSON.")
_PLOT_FROM = flags.DEFINE_string(
    "plot_from", None, "Only redraw the PNG of a results JSON.")
_PLOT = flags.DEFINE_string(
    "plot", str(RESULTS / "scale.png"), "Where to write the PNG.")
_SPARSE_GROUPS = flags.DEFINE_integer(
    "sparse_groups", 64, "Sampling budget of the mhs_dense and mhs_sparse* "
    "rows (a step samples max(budget, batch) groups).")
_MAX_STEP = flags.DEFINE_float(
    "max_step_seconds", 60.0, "A point whose first (warm-up) step takes "
    "longer reports that step alone, and the head's larger C are skipped.")
_MERGE = flags.DEFINE_bool(
    "merge", False, "Add the rows to the --out JSON (replacing rows of the "
    "same head, C and batch) instead of overwriting it.")

# Defaults of the shared heads.py flags for this benchmark (see the README).
FLAGS.set_default("classes", ["1e4", "3e4", "1e5", "3e5", "1e6", "3e6", "1e7",
                              "3e7", "1e8"])
FLAGS.set_default("heads", [
    "vanilla", "vanilla_momentum", "vanilla_sgd", "vanilla_bf16",
    "vanilla_bf16_momentum",
    "mhp", "mhc", "mhs_dense", "mhs_sparse", "mhs_sparse_momentum",
    "mhs_sparse_sgd"])
FLAGS.set_default("batch", 64)
FLAGS.set_default("dim", 256)
FLAGS.set_default("repeats", 3)
FLAGS.set_default("memory_budget_gb", 10.0)
FLAGS.set_default("out", str(RESULTS / "scale.json"))

_PASSED_FLAGS = ("batch", "dim", "num_heads", "beam", "hidden",
                 "sampled_groups", "sparse_groups", "repeats",
                 "memory_budget_gb", "machine_memory_gb", "top_k",
                 "max_step_seconds")
_RESULT_TAG = "SCALE_POINT_RESULT "
_LR = 1e-3  # heads.py's adam
# Rows of this benchmark beyond benchmarks/heads.py's: name -> (head,
# parameter dtype, optimiser). vanilla_*: the full classifier with the
# options a user at 10^6+ classes turns on (bfloat16 parameters and matmuls,
# float32 accumulation; SGD with momentum). mhs_*: the --sparse_groups
# budget with the dense adam update or the sparse update (the lazy form of
# adam or of momentum SGD, or plain SGD; only the sampled rows and their
# state touched).
_VARIANTS = {
    "vanilla_momentum": ("vanilla", "float32", "momentum"),
    "vanilla_sgd": ("vanilla", "float32", "sgd"),
    "vanilla_bf16": ("vanilla", "bfloat16", "adam"),
    "vanilla_bf16_momentum": ("vanilla", "bfloat16", "momentum"),
    "mhs_dense": ("mhs", "float32", "adam"),
    "mhs_sparse": ("mhs", "float32", "sparse_adam"),
    "mhs_sparse_momentum": ("mhs", "float32", "sparse_momentum"),
    "mhs_sparse_sgd": ("mhs", "float32", "sparse_sgd"),
    "mhs_sparse_bf16_momentum": ("mhs", "bfloat16", "sparse_momentum"),
}
_MOMENTUM = 0.9


def _rss_peak_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _variant_create(name: str, num_classes: int):
  """The head and optimiser of a ``_VARIANTS`` row."""
  head_type, param_dtype, rule = _VARIANTS[name]
  param_dtype = jnp.dtype(param_dtype)
  dtype = None if param_dtype == jnp.float32 else param_dtype
  rngs = nnx.Rngs(0)
  if head_type == "vanilla":
    head = VanillaHead(FLAGS.dim, num_classes, dtype=dtype,
                       param_dtype=param_dtype, rngs=rngs)
  else:
    head = MHSHead(FLAGS.dim,
                   LabelCodec.balanced(num_classes, FLAGS.num_heads),
                   _SPARSE_GROUPS.value, dtype=dtype, param_dtype=param_dtype,
                   rngs=rngs)
  if rule.startswith("sparse_"):  # adam: nothing left for it
    return head, SparseUpdateOptimizer(head, optax.adam(_LR),
                                       rule=rule[len("sparse_"):],
                                       momentum=_MOMENTUM)
  tx = {"adam": optax.adam(_LR), "sgd": optax.sgd(_LR),
        "momentum": optax.sgd(_LR, momentum=_MOMENTUM)}[rule]
  return head, nnx.Optimizer(head, tx, wrt=nnx.Param)


def compile_step(name: str, num_classes: int):
  """``heads.compile_step``, and the steps of the ``_VARIANTS`` rows."""
  if name not in _VARIANTS:
    return heads_lib.compile_step(name, num_classes)
  create = lambda: _variant_create(name, num_classes)
  graphdef, abstract_state = nnx.split(nnx.eval_shape(create))
  sparse = _VARIANTS[name][2].startswith("sparse_")

  def step(state, x, y, rng):
    head, optimizer = nnx.merge(graphdef, state)
    loss_fn = lambda h: h.loss(x, y, rng=rng)
    if sparse:
      loss, grads, rows = optimizer.value_and_grad(loss_fn, head)
      optimizer.update(head, grads)
      optimizer.update_rows(head, rows, _LR)
    else:
      loss, grads = nnx.value_and_grad(loss_fn)(head)
      optimizer.update(head, grads)
    return nnx.state((head, optimizer)), loss

  x, y, key = jax.eval_shape(heads_lib.inputs, num_classes)
  compiled = jax.jit(step, donate_argnums=0).lower(
      abstract_state, x, y, key).compile()
  init = jax.jit(lambda: nnx.split(create())[1])
  return compiled, init, graphdef


def run_point(name: str, num_classes: int) -> dict:
  """Measures one (head, C) point in this process (meant to be a fresh one)."""
  jax.block_until_ready(jax.numpy.ones(8) + 1)  # runtime up before the baseline
  head_type, param_dtype, rule = _VARIANTS.get(name, (name, "float32", "adam"))
  row = dict(head=name, num_classes=num_classes,
             params=heads_lib.param_count(head_type, num_classes),
             param_dtype=param_dtype, optimizer=rule, batch=FLAGS.batch,
             rss_base_bytes=_rss_peak_bytes())
  if name in _VARIANTS and head_type == "mhs":
    row["sampled_groups"] = _SPARSE_GROUPS.value
  t0 = time.perf_counter()
  compiled, init, graphdef = compile_step(name, num_classes)
  row["compile_seconds"] = time.perf_counter() - t0
  row.update(heads_lib.memory_stats(compiled) or {})
  need = row.get("live_bytes", 16 * row["params"])
  if need > FLAGS.memory_budget_gb * GB:
    where = ("does not fit in this machine's "
             f"{_MACHINE_GB.value:g} GiB" if need > _MACHINE_GB.value * GB
             else f"over the run budget {FLAGS.memory_budget_gb:g} GiB")
    row.update(seconds=None, infer_examples_per_second=None,
               note=f"skipped: the compiled step needs {_fmt_bytes(need)}, "
               f"{where}")
    return row
  state = jax.block_until_ready(init())
  x, y, key = heads_lib.inputs(num_classes)
  t0 = time.perf_counter()
  state, loss = compiled(state, x, y, key)
  jax.block_until_ready(loss)
  first = time.perf_counter() - t0
  if first > _MAX_STEP.value:
    row.update(seconds=first, over_time=True,
               note=f"one step timed: its warm-up step took {first:.0f} s, "
               f"over --max_step_seconds={_MAX_STEP.value:g}")
  else:
    out = [state, loss]

    def one(i):
      out[0], out[1] = compiled(out[0], x, y, jax.random.fold_in(key, i + 1))
      jax.block_until_ready(out[1])

    row["seconds"] = heads_lib.median_seconds(one, FLAGS.repeats)
    state, loss = out
    del out
  row["loss"] = float(loss)

  head = nnx.merge(graphdef, state)[0]  # the optimiser's state is let go
  head_graph, head_state = nnx.split(head)
  del state, head
  topk = jax.jit(
      lambda s, x: nnx.merge(head_graph, s).topk(x, _TOP_K.value)[1])
  x, _, _ = heads_lib.inputs(num_classes)
  compiled_topk = topk.lower(head_state, x).compile()
  row["infer_live_bytes"] = (heads_lib.memory_stats(compiled_topk) or
                             {}).get("live_bytes")
  if (row["infer_live_bytes"] or 0) > FLAGS.memory_budget_gb * GB:
    row.update(infer_examples_per_second=None,
               rss_peak_bytes=_rss_peak_bytes(),
               note=f"top-5 not run: needs "
               f"{_fmt_bytes(row['infer_live_bytes'])}")
    return row
  jax.block_until_ready(compiled_topk(head_state, x))
  sec = heads_lib.median_seconds(
      lambda i: jax.block_until_ready(compiled_topk(head_state, x)),
      FLAGS.repeats)
  row["infer_seconds"] = sec
  row["infer_examples_per_second"] = FLAGS.batch / sec
  row["rss_peak_bytes"] = _rss_peak_bytes()
  return row


def run_point_subprocess(name: str, num_classes: int) -> dict:
  """Runs one point in a fresh Python process, so its RSS peak is its own."""
  cmd = [sys.executable, __file__, f"--point={name}:{num_classes}"]
  for f in _PASSED_FLAGS:
    cmd.append(f"--{f}={FLAGS[f].value}")
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  for line in proc.stdout.splitlines():
    if line.startswith(_RESULT_TAG):
      return json.loads(line[len(_RESULT_TAG):])
  raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n"
                     f"{proc.stderr[-3000:]}")


def _fmt_bytes(b) -> str:
  if b is None:
    return "-"
  return f"{b / GB:,.2f} GiB" if b >= 0.1 * GB else f"{b / 2**20:,.1f} MiB"


def _label(row: dict, meta: dict) -> str:
  """A row's column: its head, and its batch where not the run's."""
  batch = row.get("batch", meta["batch"])
  return row["head"] + ("" if batch == meta["batch"] else f" B={batch}")


def _key(row: dict, meta: dict) -> tuple:
  return _label(row, meta), row["num_classes"]


def markdown_table(results: dict) -> str:
  """One row per C, one column per head: time, memory, throughput."""
  meta = results["meta"]
  rows = [dict(r, head=_label(r, meta)) for r in results["rows"]]
  names = list(dict.fromkeys(r["head"] for r in rows))
  lines = ["| C | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
  for c in sorted({r["num_classes"] for r in rows}):
    cells = []
    for name in names:
      r = next((r for r in rows if r["head"] == name and r["num_classes"] == c),
               None)
      if r is None:
        cells.append("-")
      elif r["seconds"] is None and "live_bytes" not in r:
        cells.append("not run: " + r["note"].removeprefix("skipped: "))
      elif r["seconds"] is None:
        fits = r.get("live_bytes", 0) <= results["meta"]["machine_memory_gb"] * GB
        cells.append(f"not run: needs {_fmt_bytes(r.get('live_bytes'))} "
                     f"({'over the run budget' if fits else 'does not fit'})")
      else:
        infer = r["infer_examples_per_second"]
        one = " (1 step)" if r.get("over_time") else ""
        cells.append(f"{r['seconds'] * 1e3:,.1f} ms{one} / "
                     f"{_fmt_bytes(r['live_bytes'])} "
                     f"({_fmt_bytes(r['rss_peak_bytes'])}) / "
                     + ("-" if infer is None else f"{infer:,.0f}"))
    lines.append(f"| {c:.0e} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def best_vanilla(rows: list[dict], num_classes: int) -> dict | None:
  """The fastest vanilla* row that ran at ``num_classes``, else None."""
  ran = [r for r in rows if r["head"].startswith("vanilla") and
         r["num_classes"] == num_classes and r["seconds"] is not None]
  return min(ran, key=lambda r: r["seconds"]) if ran else None


def comparison_table(results: dict) -> str:
  """Per C: the fastest and the leanest vanilla rows, and each MHE row's
  step speed-up over the fastest and compiled memory as a fraction of the
  fastest's / of the leanest's; where no vanilla row ran, the MHE rows'
  step time and memory."""
  meta = results["meta"]
  rows = [dict(r, head=_label(r, meta)) for r in results["rows"]]
  names = [n for n in dict.fromkeys(r["head"] for r in rows)
           if not n.startswith("vanilla")]
  lines = ["| C | fastest vanilla: row, ms, memory | leanest vanilla: row, "
           "memory | " + " | ".join(f"{n}: x faster, memory / fastest's / "
                                     "leanest's" for n in names) + " |", "|---|---|---|" + "---|" * len(names)]
  for c in sorted({r["num_classes"] for r in rows}):
    base = best_vanilla(rows, c)
    ran = {name: next((r for r in rows if r["head"] == name and
                       r["num_classes"] == c and r["seconds"] is not None),
                      None) for name in names}
    if base is None:  # no vanilla row ran: the MHE rows' own figures
      need = min((r.get("live_bytes") or 0 for r in rows
                  if r["head"].startswith("vanilla") and
                  r["num_classes"] == c), default=None)
      if need is None or not any(ran.values()):
        continue
      cells = [f"none ran (the leanest needs {_fmt_bytes(need)})", "-"]
      cells += ["-" if r is None else f"{r['seconds'] * 1e3:,.0f} ms, "
                f"{_fmt_bytes(r['live_bytes'])}" for r in ran.values()]
      lines.append(f"| {c:.0e} | " + " | ".join(cells) + " |")
      continue
    lean = min((r for r in rows if r["head"].startswith("vanilla") and
                r["num_classes"] == c and r["seconds"] is not None),
               key=lambda r: r["live_bytes"])
    cells = [f"{base['head']}, {base['seconds'] * 1e3:,.0f} ms, "
             f"{_fmt_bytes(base['live_bytes'])}",
             f"{lean['head']}, {_fmt_bytes(lean['live_bytes'])}"]
    for r in ran.values():
      cells.append("-" if r is None else
                   f"{base['seconds'] / r['seconds']:,.1f}x, "
                   f"{r['live_bytes'] / base['live_bytes']:.2f} / "
                   f"{r['live_bytes'] / lean['live_bytes']:.2f}")
    lines.append(f"| {c:.0e} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def plot(results: dict, path: str) -> None:
  """Log-log: train-step time, memory and inference throughput against C."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  meta = results["meta"]
  rows = [dict(r, head=_label(r, meta)) for r in results["rows"]]
  names = list(dict.fromkeys(r["head"] for r in rows))
  panels = (("train step (s)", lambda r: r["seconds"]),
            ("train-step memory, compiled (GiB)",
             lambda r: r.get("live_bytes") and r["live_bytes"] / GB),
            ("inference to top-5 (examples/s)",
             lambda r: r["infer_examples_per_second"]))
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
  cmap = plt.get_cmap("tab20")  # more rows than the default cycle's 10
  colors = {name: cmap(i % 20) for i, name in enumerate(names)}
  for i, (ax, (label, value)) in enumerate(zip(axes, panels)):
    for name in names:
      pts = sorted((r["num_classes"], value(r)) for r in rows
                   if r["head"] == name and r["seconds"] is not None
                   and value(r) is not None)
      if pts:
        ax.plot(*zip(*pts), marker="o", label=name, color=colors[name])
      skipped = sorted((r["num_classes"], value(r)) for r in rows
                       if r["head"] == name and r["seconds"] is None
                       and value(r) is not None)
      if i == 1 and skipped:  # compiled (not run) memory of skipped points
        ax.plot(*zip(*(pts[-1:] + skipped)), ls=":", marker="o",
                mfc="none", color=colors[name],
                label=f"{name}: compiled only, not run")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("classes C")
    ax.set_ylabel(label)
    ax.grid(True, which="both", alpha=0.3)
  axes[1].axhline(meta["machine_memory_gb"], color="k", ls="--", lw=1)
  axes[1].text(0.02, meta["machine_memory_gb"] * 1.15,
               f"machine RAM {meta['machine_memory_gb']:g} GiB", fontsize=8,
               ha="left", transform=axes[1].get_yaxis_transform())
  # One legend beside the panels: the rows, then the memory panel's
  # compiled-only lines.
  handles, labels = axes[1].get_legend_handles_labels()
  fig.legend(handles, labels, fontsize=8, loc="center left",
             bbox_to_anchor=(1.0, 0.5))
  fig.suptitle(f"heads alone, B={meta['batch']}, d={meta['dim']}, "
               f"H={meta['num_heads']}, {meta['cpu_count']}-core CPU "
               f"(shared), jax {meta['jax']}", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=90, bbox_inches="tight")
  plt.close(fig)


def main(argv):
  del argv
  if FLAGS.markdown_from:
    results = json.loads(pathlib.Path(FLAGS.markdown_from).read_text())
    print(markdown_table(results))
    print()
    print(comparison_table(results))
    return
  if _PLOT_FROM.value:
    plot(json.loads(pathlib.Path(_PLOT_FROM.value).read_text()), _PLOT.value)
    print(f"wrote {_PLOT.value}")
    return
  if _POINT.value:
    name, c = _POINT.value.split(":")
    print(_RESULT_TAG + json.dumps(run_point(name, int(c))), flush=True)
    return
  rows = []
  out = pathlib.Path(FLAGS.out)
  # Rows whose one step took too long: this run's, and with --merge those
  # of the same batch in --out.
  slow_rows = [r for r in (json.loads(out.read_text())["rows"]
                           if _MERGE.value and out.exists() else [])
               if r.get("over_time") and r.get("batch") == FLAGS.batch]
  t_start = time.perf_counter()
  print(f"{'head':<22}{'C':>13}{'params':>15}{'step ms':>11}{'live GB':>9}"
        f"{'RSS GB':>8}{'top-5 ex/s':>12}  note", flush=True)
  for c in [int(float(c)) for c in FLAGS.classes]:
    for name in FLAGS.heads:
      slow = next((r for r in slow_rows + rows if r["head"] == name and
                   r.get("over_time") and r["num_classes"] < c), None)
      if slow is not None:  # a smaller C already took too long a step
        rows.append(dict(
            head=name, num_classes=c, batch=FLAGS.batch, seconds=None,
            infer_examples_per_second=None,
            note=f"skipped: one step at C={slow['num_classes']:.0e} took "
            f"{slow['seconds']:.0f} s, over --max_step_seconds"))
        print(f"{name:<22}{c:>13,}  {rows[-1]['note']}", flush=True)
        continue
      r = run_point_subprocess(name, c)
      rows.append(r)
      if r["seconds"] is None:
        print(f"{name:<22}{c:>13,}{r['params']:>15,}{'-':>11}"
              f"{(r.get('live_bytes') or 0) / GB:>9.2f}{'-':>8}{'-':>12}  "
              f"{r['note']}", flush=True)
      else:
        print(f"{name:<22}{c:>13,}{r['params']:>15,}{r['seconds'] * 1e3:>11.2f}"
              f"{r['live_bytes'] / GB:>9.3f}{r['rss_peak_bytes'] / GB:>8.2f}"
              + (f"{'-':>12}" if r["infer_examples_per_second"] is None
                 else f"{r['infer_examples_per_second']:>12,.0f}"),
              flush=True)
  meta = dict(benchmark="scale", batch=FLAGS.batch, dim=FLAGS.dim,
              num_heads=FLAGS.num_heads, beam=FLAGS.beam, hidden=FLAGS.hidden,
              sampled_groups=FLAGS.sampled_groups, repeats=FLAGS.repeats,
              top_k=_TOP_K.value, memory_budget_gb=FLAGS.memory_budget_gb,
              machine_memory_gb=_MACHINE_GB.value, jax=jax.__version__,
              devices=[str(d) for d in jax.devices()],
              cpu_count=os.cpu_count(), machine=platform.machine(),
              load_average=os.getloadavg(),
              wall_seconds=time.perf_counter() - t_start,
              time=time.strftime("%Y-%m-%d %H:%M"))
  if _MERGE.value and out.exists():
    results = json.loads(out.read_text())
    for r in rows:
      r.setdefault("batch", FLAGS.batch)
    new = {_key(r, results["meta"]) for r in rows}
    results["rows"] = [r for r in results["rows"]
                       if _key(r, results["meta"]) not in new] + rows
    results["meta"].setdefault("merged", []).append(dict(
        meta, heads=list(FLAGS.heads), classes=list(FLAGS.classes),
        sparse_groups=_SPARSE_GROUPS.value))
  else:
    meta["sparse_groups"] = _SPARSE_GROUPS.value
    results = dict(meta=meta, rows=rows)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(results, indent=1))
  plot(results, _PLOT.value)
  print(markdown_table(results))
  print()
  print(comparison_table(results))
  print(f"wrote {out} and {_PLOT.value}")


if __name__ == "__main__":
  app.run(main)
