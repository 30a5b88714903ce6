"""Scale benchmark: train-step time, memory and inference throughput against C.

Extends ``benchmarks/heads.py`` (same heads, same jitted train step of the
head alone on synthetic features ``x [B, d]`` with random labels: forward,
backward and a donated adam update; its flags ``--batch``, ``--dim``,
``--num_heads``, ``--beam``, ``--hidden``, ``--sampled_groups``,
``--repeats`` apply) to C from 10^4 to 10^8 and adds, per (head, C) point:

* ``step_seconds``: median of ``--repeats`` train steps after compilation
  and one warm-up step.
* Memory, two ways. ``live_bytes``: the compiled step's
  ``memory_analysis()`` arguments + outputs - donated (aliased) outputs +
  XLA temporaries, i.e. parameters, adam state, gradients, batch and
  everything alive inside the step. ``rss_peak_bytes``: the process's
  resident-set high-water mark (``getrusage`` ``ru_maxrss``) at the end of
  the point, which runs in its own subprocess; ``rss_base_bytes`` is the
  same mark just before the head is created (the JAX runtime itself).
* ``infer_examples_per_second``: batch / median time of the jitted
  ``head.topk(x, 5)`` (features to the top-5 labels; vanilla scores all C
  classes in chunks, MHP decodes the exact product top-k, MHC its beam, MHS
  the full classifier).

Beside the heads of ``benchmarks/heads.py`` (``mhs`` samples
``--sampled_groups`` groups and updates the classifier densely), three MHS
rows sample ``--sparse_groups`` groups: ``mhs_dense`` (the dense adam
update, as ``mhs``), ``mhs_sparse`` (only the sampled rows and their state
are updated: lazy Adam, :class:`mhe_jax.nn.mhs.SparseUpdateOptimizer`) and
``mhs_sparse_momentum`` (lazy momentum SGD: one state table instead of
two). A step samples ``max(budget, B)`` groups (every batch label's group
must fit), so with B=256 a budget below 256 samples 256 groups.
``--merge`` adds the rows run to the ``--out`` JSON, replacing rows of the
same head, C and batch and keeping the rest; a row of another batch than
the file's is labelled with it (``mhs_sparse B=64``).

Each point first compiles the train step from abstract shapes (nothing
allocated) and is skipped, with its compiled memory and the reason, when
``live_bytes`` exceeds ``--memory_budget_gb``; such a point is marked "does
not fit" when it also exceeds ``--machine_memory_gb`` (this machine's RAM).
Writes JSON and a log-log PNG (train-step time, memory and inference
throughput against C, one line per head).

  python benchmarks/scale.py                       # ~10 min on 2 CPU cores
  python benchmarks/scale.py --classes=1e4,1e5 --repeats=2 --out=/tmp/s.json
  python benchmarks/scale.py --markdown_from=benchmarks/results/scale.json
  python benchmarks/scale.py --plot_from=benchmarks/results/scale.json
  python benchmarks/scale.py --heads=mhs_dense,mhs_sparse,mhs_sparse_momentum \
      --classes=1e5,1e6,1e7 --merge              # the sparse-update rows
  python benchmarks/scale.py --heads=mhs_dense,mhs_sparse,mhs_sparse_momentum \
      --classes=1e5,1e6,3e6,1e7 --batch=64 --sparse_groups=64 \
      --memory_budget_gb=16 --merge              # ... at 64 of r_1 groups
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
import optax

import heads as heads_lib  # benchmarks/heads.py (this directory is on sys.path)
from mhe_jax import LabelCodec
from mhe_jax.nn.mhs import MHSHead
from mhe_jax.nn.mhs import SparseUpdateOptimizer

FLAGS = flags.FLAGS
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
    "sparse_groups", 256, "Sampling budget of the mhs_dense, mhs_sparse and "
    "mhs_sparse_momentum rows (a step samples max(budget, batch) groups).")
_MERGE = flags.DEFINE_bool(
    "merge", False, "Add the rows to the --out JSON (replacing rows of the "
    "same head, C and batch) instead of overwriting it.")

# Defaults of the shared heads.py flags for this benchmark (see the README).
FLAGS.set_default("classes", ["1e4", "3e4", "1e5", "3e5", "1e6", "3e6", "1e7",
                              "3e7", "1e8"])
FLAGS.set_default("dim", 256)
FLAGS.set_default("repeats", 3)
FLAGS.set_default("memory_budget_gb", 10.0)
FLAGS.set_default("out", str(RESULTS / "scale.json"))

_PASSED_FLAGS = ("batch", "dim", "num_heads", "beam", "hidden",
                 "sampled_groups", "sparse_groups", "repeats",
                 "memory_budget_gb", "machine_memory_gb", "top_k")
_RESULT_TAG = "SCALE_POINT_RESULT "
_LR = 1e-3  # heads.py's adam
# Heads of this benchmark beyond benchmarks/heads.py's: MHS with the
# --sparse_groups budget and the dense update, or the sparse update with the
# lazy form of adam or of momentum SGD.
_MHS_BUDGET_HEADS = {"mhs_dense": None, "mhs_sparse": "adam",
                     "mhs_sparse_momentum": "momentum"}


def _rss_peak_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _mhs_budget_create(name: str, num_classes: int):
  head = MHSHead(FLAGS.dim, LabelCodec.balanced(num_classes, FLAGS.num_heads),
                 _SPARSE_GROUPS.value, rngs=nnx.Rngs(0))
  rule = _MHS_BUDGET_HEADS[name]
  if rule is None:
    return head, nnx.Optimizer(head, optax.adam(_LR), wrt=nnx.Param)
  return head, SparseUpdateOptimizer(
      head, optax.adam(_LR), rule=rule)  # adam: nothing left for it


def compile_step(name: str, num_classes: int):
  """``heads.compile_step``, and the steps of the --sparse_groups rows."""
  if name not in _MHS_BUDGET_HEADS:
    return heads_lib.compile_step(name, num_classes)
  create = lambda: _mhs_budget_create(name, num_classes)
  graphdef, abstract_state = nnx.split(nnx.eval_shape(create))
  sparse = _MHS_BUDGET_HEADS[name] is not None

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
  budget_head = name in _MHS_BUDGET_HEADS
  row = dict(head=name, num_classes=num_classes,
             params=heads_lib.param_count("mhs" if budget_head else name,
                                          num_classes),
             rss_base_bytes=_rss_peak_bytes())
  if budget_head:
    row.update(sampled_groups=_SPARSE_GROUPS.value, batch=FLAGS.batch)
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
  row["seconds"], row["loss"], state = heads_lib.run_steps(
      compiled, init(), num_classes, FLAGS.repeats)

  head, _ = nnx.merge(graphdef, state)
  head_graph, head_state = nnx.split(head)
  del state, head
  topk = jax.jit(
      lambda s, x: nnx.merge(head_graph, s).topk(x, _TOP_K.value)[1])
  x, _, _ = heads_lib.inputs(num_classes)
  compiled_topk = topk.lower(head_state, x).compile()
  row["infer_live_bytes"] = (heads_lib.memory_stats(compiled_topk) or
                             {}).get("live_bytes")
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
      elif r["seconds"] is None:
        fits = r.get("live_bytes", 0) <= results["meta"]["machine_memory_gb"] * GB
        cells.append(f"not run: needs {_fmt_bytes(r.get('live_bytes'))} "
                     f"({'over the run budget' if fits else 'does not fit'})")
      else:
        cells.append(f"{r['seconds'] * 1e3:,.1f} ms / "
                     f"{_fmt_bytes(r['live_bytes'])} "
                     f"({_fmt_bytes(r['rss_peak_bytes'])}) / "
                     f"{r['infer_examples_per_second']:,.0f}")
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
  colors = dict(zip(names, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
  for i, (ax, (label, value)) in enumerate(zip(axes, panels)):
    for name in names:
      pts = sorted((r["num_classes"], value(r)) for r in rows
                   if r["head"] == name and r["seconds"] is not None)
      if pts:
        ax.plot(*zip(*pts), marker="o", label=name, color=colors[name])
      skipped = sorted((r["num_classes"], value(r)) for r in rows
                       if r["head"] == name and r["seconds"] is None)
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
  axes[0].legend()
  axes[1].legend(fontsize=7, loc="lower right")
  fig.suptitle(f"heads alone, B={meta['batch']}, d={meta['dim']}, "
               f"H={meta['num_heads']}, {meta['cpu_count']}-core CPU "
               f"(shared), jax {meta['jax']}", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def main(argv):
  del argv
  if FLAGS.markdown_from:
    print(markdown_table(json.loads(pathlib.Path(FLAGS.markdown_from).read_text())))
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
  t_start = time.perf_counter()
  print(f"{'head':<9}{'C':>13}{'params':>15}{'step ms':>11}{'live GB':>9}"
        f"{'RSS GB':>8}{'top-5 ex/s':>12}  note", flush=True)
  for c in [int(float(c)) for c in FLAGS.classes]:
    for name in FLAGS.heads:
      r = run_point_subprocess(name, c)
      rows.append(r)
      if r["seconds"] is None:
        print(f"{name:<9}{c:>13,}{r['params']:>15,}{'-':>11}"
              f"{(r.get('live_bytes') or 0) / GB:>9.2f}{'-':>8}{'-':>12}  "
              f"{r['note']}", flush=True)
      else:
        print(f"{name:<9}{c:>13,}{r['params']:>15,}{r['seconds'] * 1e3:>11.2f}"
              f"{r['live_bytes'] / GB:>9.3f}{r['rss_peak_bytes'] / GB:>8.2f}"
              f"{r['infer_examples_per_second']:>12,.0f}", flush=True)
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
  out = pathlib.Path(FLAGS.out)
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
  print(f"wrote {out} and {_PLOT.value}")


if __name__ == "__main__":
  app.run(main)
