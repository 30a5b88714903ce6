"""Large vocabulary: Shakespeare next word, vanilla softmax vs MHE heads.

Trains every setting below with :func:`mhe_jax.train.train_and_evaluate` on
the same task, encoder and schedule (the heads of ``configs/shakespeare.py``:
4 previous words -> token_context encoder -> head; 11,697 classes; 600 steps
of 256; adam 2e-3 cosine) and evaluates on the test part:

* ``vanilla``: full softmax over 11,697 words (``:head=vanilla``).
* ``mhp H=2`` / ``mhp H=3``: Multi-Head Product (``:head=mhp``,
  ``:head=mhp3``).
* ``mhs``: Multi-Head Sampling, full classifier trained on 256 sampled groups
  of 12 words (``:head=mhs``).
* ``mhc H=2``: Multi-Head Cascade, ``:head=mhp`` with ``head.type=mhc``
  (untuned defaults: beam 16, hidden 64).

For each it records acc@1 / acc@5, the train-loop time per step after
compilation ((train_seconds - compile_seconds) / (steps - 1) from the
trainer's results, so it includes batching on the host), the head's
parameters (``nnx.Param`` leaves of ``model.head``), the encoder's and the
whole model's. Prints a markdown table and writes JSON and a PNG (accuracy
against head parameters and against step time).

  python benchmarks/shakespeare.py                  # ~9 min on 2 loaded CPU cores
  python benchmarks/shakespeare.py --seeds=1 --merge  # add a seed to the JSON
  python benchmarks/shakespeare.py --quick          # 'runlocal' configs, ~1 min
  python benchmarks/shakespeare.py --markdown_from=benchmarks/results/shakespeare.json  # + PNG
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import tempfile
import time

from absl import app
from absl import flags
from flax import nnx
import jax
import numpy as np

from mhe_jax import config_lib
from mhe_jax import registry
from mhe_jax import train
from mhe_jax.data import datasets

REPO = pathlib.Path(__file__).resolve().parents[1]

CONFIG = REPO / "configs" / "shakespeare.py"
# (name, head of configs/shakespeare.py, overrides as dotted key -> value)
SETTINGS = (
    ("vanilla", "vanilla", {}),
    ("mhp H=2", "mhp", {}),
    ("mhp H=3", "mhp3", {}),
    ("mhs", "mhs", {}),
    ("mhc H=2", "mhp", {"head.type": "mhc"}),
)

_SETTINGS = flags.DEFINE_list(
    "settings", [s[0] for s in SETTINGS], "Which settings to run, by name.")
_QUICK = flags.DEFINE_bool(
    "quick", False, "Use the configs' 'runlocal' variants (seconds each).")
_SEEDS = flags.DEFINE_list(
    "seeds", ["0"], "config.seed values; every setting runs once per seed "
    "(initialisation and data order change; the split does not).")
_MERGE = flags.DEFINE_bool(
    "merge", False, "Keep the rows of an existing --out JSON whose (setting, "
    "seed) this run does not redo, so seeds can run one at a time.")
_MARKDOWN_FROM = flags.DEFINE_string(
    "markdown_from", None, "Only print the README table of a results JSON.")
_PLOT = flags.DEFINE_string(
    "plot", str(REPO / "benchmarks" / "results" / "shakespeare.png"),
    "Where to write the PNG (accuracy against head parameters and step time).")
_OUT = flags.DEFINE_string(
    "out", str(REPO / "benchmarks" / "results" / "shakespeare.json"),
    "Where to write the JSON results.")


def _count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in
                 jax.tree.leaves(nnx.state(tree, nnx.Param))))


def param_counts(config) -> dict[str, int]:
  """Head / encoder / model parameters, from abstract shapes (no allocation)."""
  data = datasets.load_dataset(config.data, config.seed)
  model = nnx.eval_shape(
      lambda: registry.build_model(config, data, nnx.Rngs(config.seed)))
  return dict(head_params=_count(model.head),
              encoder_params=_count(model.encoder), model_params=_count(model))


def run_setting(name: str, head: str, overrides: dict, quick: bool,
                seed: int) -> dict:
  arg = f"head={head}" + (",runlocal" if quick else "")
  config = config_lib.from_file(CONFIG, arg, overrides)
  config.seed = seed
  counts = param_counts(config)
  with tempfile.TemporaryDirectory(prefix="mhe_shakespeare_") as workdir:
    t0 = time.perf_counter()
    results = train.train_and_evaluate(config, workdir)
    wall = time.perf_counter() - t0
  steps = results["steps"]
  step_seconds = ((results["train_seconds"] - results["compile_seconds"]) /
                  (steps - 1) if steps > 1 else None)
  assert counts["model_params"] == results["num_params"], (counts, results)
  return dict(
      setting=name, config=f"configs/{CONFIG.name}:{arg}",
      overrides=overrides, seed=seed,
      head=config.head.type, num_heads=config.head.num_heads,
      num_classes=results["num_classes"], steps=steps,
      batch_size=config.batch_size, acc1=results["acc@1"],
      acc5=results["acc@5"], train_seconds=results["train_seconds"],
      compile_seconds=results["compile_seconds"], step_seconds=step_seconds,
      train_examples_per_second=results["train_examples_per_second"],
      wall_seconds=wall, **counts)


def _mean_std(rows, key) -> tuple[float, float]:
  values = np.array([r[key] for r in rows], dtype=np.float64)
  return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def summarize(rows: list[dict]) -> list[dict]:
  """One entry per setting: means (and sample std) over its seeds."""
  out = []
  for name in dict.fromkeys(r["setting"] for r in rows):
    runs = [r for r in rows if r["setting"] == name]
    entry = {k: runs[0][k] for k in ("setting", "head", "head_params",
                                     "encoder_params", "model_params")}
    entry["seeds"] = [r.get("seed", 0) for r in runs]
    for key in ("acc1", "acc5", "step_seconds", "train_seconds"):
      entry[key], entry[key + "_std"] = _mean_std(runs, key)
    out.append(entry)
  return out


def markdown_table(results: dict) -> str:
  rows = summarize(results["rows"])
  base = next((r for r in rows if r["head"] == "vanilla"), None)
  multi = any(len(r["seeds"]) > 1 for r in rows)
  pm = (lambda r, k: f" ± {100 * r[k + '_std']:.1f}") if multi else (
      lambda r, k: "")
  lines = [
      "| head | acc@1 | acc@5 | Δ acc@1 / acc@5 vs vanilla | train ms/step "
      "(speed-up) | train loop s | head params (share of vanilla's) | "
      "encoder params | model params |",
      "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    if base is None:
      delta = speed = share = "-"
    else:
      delta = (f"{100 * (r['acc1'] - base['acc1']):+.1f} / "
               f"{100 * (r['acc5'] - base['acc5']):+.1f}")
      speed = f"{base['step_seconds'] / r['step_seconds']:.1f}x"
      share = f"{100 * r['head_params'] / base['head_params']:.1f}%"
    lines.append(
        f"| {r['setting']} | {100 * r['acc1']:.1f}{pm(r, 'acc1')} | "
        f"{100 * r['acc5']:.1f}{pm(r, 'acc5')} | {delta} | "
        f"{1e3 * r['step_seconds']:.1f} ({speed}) | "
        f"{r['train_seconds']:.0f} | {r['head_params']:,} ({share}) | "
        f"{r['encoder_params']:,} | {r['model_params']:,} |")
  return "\n".join(lines)


def plot(results: dict, path: str) -> None:
  """Bars: acc@1 / acc@5 per setting; head parameters and train-step time."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  rows = summarize(results["rows"])
  names = [r["setting"] for r in rows]
  pos = np.arange(len(rows))
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  for offset, key in ((-0.2, "acc1"), (0.2, "acc5")):
    axes[0].bar(pos + offset, [100 * r[key] for r in rows], 0.4,
                yerr=[100 * r[key + "_std"] for r in rows], capsize=3,
                label=key.replace("acc", "acc@"))
  axes[0].set_ylabel("test accuracy (%)")
  axes[0].legend()
  for ax, key, scale, label in (
      (axes[1], "head_params", 1, "head (classifier) parameters"),
      (axes[2], "step_seconds", 1e3,
       "train step, ms (whole model; shared CPU)")):
    values = [r[key] * scale for r in rows]
    ax.bar(pos, values, 0.6, color="C2")
    for x, v in zip(pos, values):
      ax.annotate(f"{v:,.0f}", (x, v), ha="center", va="bottom", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel(label)
  for ax in axes:
    ax.set_xticks(pos, names, fontsize=8)
    ax.grid(True, axis="y", which="both", alpha=0.3)
  seeds = results["meta"].get("seeds", [0])
  fig.suptitle(f"Shakespeare next word, 11,697 classes ({len(seeds)} seeds, "
               "mean ± std)", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def main(argv):
  del argv
  if _MARKDOWN_FROM.value:
    results = json.loads(pathlib.Path(_MARKDOWN_FROM.value).read_text())
    print(markdown_table(results))
    plot(results, _PLOT.value)
    print(f"wrote {_PLOT.value}")
    return
  known = {s[0]: s for s in SETTINGS}
  unknown = set(_SETTINGS.value) - set(known)
  if unknown:
    raise ValueError(f"--settings: unknown {sorted(unknown)}; known: "
                     f"{sorted(known)}")
  meta = dict(benchmark="shakespeare", quick=_QUICK.value,
              seeds=[int(s) for s in _SEEDS.value],
              jax=jax.__version__, devices=[str(d) for d in jax.devices()],
              cpu_count=os.cpu_count(), machine=platform.machine(),
              time=time.strftime("%Y-%m-%d %H:%M"))
  results = dict(meta=meta, rows=[])
  out = pathlib.Path(_OUT.value)
  out.parent.mkdir(parents=True, exist_ok=True)
  todo = [(int(s), n) for s in _SEEDS.value for n in _SETTINGS.value]
  if _MERGE.value and out.exists():
    old = json.loads(out.read_text())
    if old["meta"].get("quick") != _QUICK.value:
      raise ValueError(f"--merge: {out} has quick={old['meta'].get('quick')}")
    results["rows"] = [r for r in old["rows"]
                       if (r.get("seed", 0), r["setting"]) not in todo]
    meta["seeds"] = sorted({r.get("seed", 0) for r in results["rows"]} |
                           {s for s, _ in todo})
    previous = dict(old["meta"])
    meta["merged_from"] = [previous] + previous.pop("merged_from", [])
  t_start = time.perf_counter()
  for seed, name in todo:
    _, head, overrides = known[name]
    row = run_setting(name, head, overrides, _QUICK.value, seed)
    results["rows"].append(row)
    print(f"{name:<9} seed {seed}  acc@1 {100 * row['acc1']:5.1f}  acc@5 "
          f"{100 * row['acc5']:5.1f}  {1e3 * row['step_seconds']:7.1f} ms/step"
          f"  head {row['head_params']:>10,}  model {row['model_params']:>10,}",
          flush=True)
    meta.update(load_average=os.getloadavg(),
                wall_seconds=time.perf_counter() - t_start)
    out.write_text(json.dumps(results, indent=1))  # partial results survive
  print(markdown_table(results))
  plot(results, _PLOT.value)
  print(f"wrote {out} and {_PLOT.value}")


if __name__ == "__main__":
  app.run(main)
