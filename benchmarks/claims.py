"""The paper's qualitative claims, measured: heads, label order, low rank.

Liang et al. (TPAMI 2024, arXiv 2412.10182) make three claims beside the
accuracy tables; this script checks each on this machine:

(a) ``heads``: accuracy as the number of heads H grows at fixed C. Shakespeare
    next word (C = 11,697; ``configs/shakespeare.py:head=mhp`` with
    ``head.num_heads`` = 2, 3, 4; 600 steps) against the full softmax
    (``configs/shakespeare.py:head=vanilla``). More heads = shorter heads (109,
    23, 11 outputs per head) = a smaller classifier.
(b) ``label_order``: "label order does not matter once the model fits"
    (Sec. 4: MHE needs no label preprocessing such as a label tree or label
    clustering). MHP with ``head.label_order`` = given / random / clustered
    (:mod:`mhe_jax.label_order`: balanced k-means of label centroids, the
    LightXML / PECOS recipe), vanilla as reference, on
    - Delicious (C = 983, multi-label; ``configs/delicious.py:head=mhp``,
      and ``:head=mhc`` whose cascade is a label tree),
    - Shakespeare next word (``configs/shakespeare.py:head=mhp``, H = 2),
    - a noisy Gaussian mixture (C = 2000, d = 64, noise 1.0; the MLP +
      head loop of ``mhe_jax.mixture``) where MHP trails the full softmax
      badly after 300 steps, and again after 1500 steps; and at noise 0.5
      after 1500 steps, where MHP comes close to fitting.
      The mixture's class ids are already random w.r.t. the centres, so
      'given' is one more random order there; 'clustered' uses class means
      of 20,000 labelled training draws.
(c) ``low_rank``: the paper generalises low-rank approximation from the
    Frobenius norm to cross-entropy and argues that a rank-limited
    classifier trained with CE keeps (nearly) full accuracy, where the
    Frobenius / squared-loss view predicts a rank-r approximation of the
    C x C one-hot matrix must lose accuracy when r << C. Checked on the
    Gaussian mixture (C = 2000, noise 0.5): MLP features -> linear to rank
    r -> C logits, trained with softmax CE, with the plain squared loss
    ``||logits - one_hot||^2`` (per example, summed over classes: the
    Frobenius objective), and with Hui & Belkin's rescaled squared loss
    (ICLR 2021; ``15 (z_y - 30)^2 + sum_{j != y} z_j^2``), the form in which
    square loss is known to train well with many classes; top-1 accuracy
    by r (600 steps; rank 512 = no bottleneck).

Everything trains with mhe_jax's own code: the trainer
(:func:`mhe_jax.train.train_and_evaluate`) for the real data, and
``mhe_jax.mixture.train_and_eval`` for the mixture. Prints markdown tables,
writes ``benchmarks/results/claims.json`` and three PNG plots next to it.

  python benchmarks/claims.py                    # all parts, ~40 min on 2 loaded CPU cores
  python benchmarks/claims.py --parts=low_rank   # one part
  python benchmarks/claims.py --quick            # smoke run (runlocal configs, few steps)
  python benchmarks/claims.py --markdown_from=benchmarks/results/claims.json  # tables + plots
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
import optax

from mhe_jax import config_lib
from mhe_jax import LabelCodec
from mhe_jax import label_order
from mhe_jax import mixture
from mhe_jax import train
from mhe_jax.data.gaussian import GaussianMixture
from mhe_jax.nn.mhp import MHPHead
from mhe_jax.nn.vanilla import VanillaHead

REPO = pathlib.Path(__file__).resolve().parents[1]

PARTS = ("heads", "order_delicious", "order_shakespeare", "order_gmm",
         "low_rank")
ORDER_PARTS = PARTS[1:4]
ORDERS = ("given", "random", "clustered")

_PARTS = flags.DEFINE_list("parts", list(PARTS), "Which claims to measure.")
_QUICK = flags.DEFINE_bool(
    "quick", False, "Smoke run: 'runlocal' configs and a few mixture steps.")
_SEED = flags.DEFINE_integer("seed", 0, "config.seed / mixture seed.")
_SKIP_SHAKESPEARE_VANILLA = flags.DEFINE_bool(
    "skip_shakespeare_vanilla", False,
    "Leave out the (slowest, ~2-7 min) full-softmax Shakespeare run.")
_MERGE = flags.DEFINE_bool(
    "merge", True, "Keep the parts of an existing --out JSON that this run "
    "does not redo (so the parts can run one at a time).")
_MARKDOWN_FROM = flags.DEFINE_string(
    "markdown_from", None, "Only print the tables of a results JSON and "
    "redraw its plots (next to it).")
_OUT = flags.DEFINE_string(
    "out", str(REPO / "benchmarks" / "results" / "claims.json"),
    "Where to write the JSON results (plots go next to it).")

# Gaussian mixture settings (mhe_jax.mixture's MLP 512-512 + adam 1e-3).
GMM = dict(num_classes=2000, dim=64, hidden=512, depth=2, batch=256)
# (noise, steps): MHP far behind the full softmax, less far, and close to it.
GMM_ORDER_SETTINGS = ((1.0, 300), (1.0, 1500), (0.5, 1500))
GMM_RANK_NOISE = 0.5
GMM_RANK_STEPS = 600
RANKS = (2, 4, 8, 16, 64)
SHAKESPEARE_HIDDEN = 512  # configs/shakespeare.py: encoder output width
LOSSES = ("ce", "squared", "squared_rescaled")


# ----------------------------------------------------------------- trainer
def trainer_run(dataset: str, head: str, overrides: dict, quick: bool,
                seed: int) -> dict:
  """``configs/<dataset>.py:head=<head>`` with dotted overrides, trained and
  evaluated."""
  arg = f"head={head}" + (",runlocal" if quick else "")
  config = config_lib.from_file(REPO / "configs" / f"{dataset}.py", arg,
                                overrides)
  config.seed = seed
  with tempfile.TemporaryDirectory(prefix="mhe_claims_") as workdir:
    t0 = time.perf_counter()
    results = train.train_and_evaluate(config, workdir)
    wall = time.perf_counter() - t0
  keep = ("acc@1", "acc@5", "P@1", "P@3", "P@5", "num_params", "steps",
          "train_seconds", "num_classes")
  return dict(config=f"configs/{dataset}.py:{arg}", overrides=overrides,
              wall_seconds=wall,
              **{k: results[k] for k in keep if k in results})


# ---------------------------------------------------------------- mixture
class LowRankHead(nnx.Module):
  """``x -> (x @ U [d, r]) @ V [r, C] + b``: a rank-r C-way classifier."""

  def __init__(self, in_features: int, num_classes: int, rank: int,
               loss: str, rngs: nnx.Rngs):
    self.down = nnx.Linear(in_features, rank, use_bias=False, rngs=rngs)
    self.up = nnx.Linear(rank, num_classes, rngs=rngs)
    self.num_classes, self.loss_name = num_classes, loss

  def __call__(self, x):
    return self.up(self.down(x))

  def loss(self, x, y, *, rng=None):
    del rng
    logits = self(x)
    if self.loss_name == "ce":
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    one_hot = jax.nn.one_hot(y, self.num_classes)
    if self.loss_name == "squared":  # ||Z - Y||_F^2 / B: the Frobenius view
      return ((logits - one_hot) ** 2).sum(-1).mean()
    # Hui & Belkin (ICLR 2021) rescaled square loss for many classes:
    # k (z_y - M)^2 + sum_{j != y} z_j^2, with their k = 15, M = 30.
    k, m = 15.0, 30.0
    weight = 1.0 + (k - 1.0) * one_hot
    return (weight * (logits - m * one_hot) ** 2).sum(-1).mean()

  def topk(self, x, k):
    return jax.lax.top_k(self(x), k)


def gmm_centroids(noise: float, seed: int, per_class: int = 10) -> np.ndarray:
  """Class means of labelled training draws (the 'clustered' order's input)."""
  task = GaussianMixture(GMM["num_classes"], GMM["dim"], noise, seed)
  x, y = task.sample(per_class * task.num_classes, seed=10_000)
  sums = np.zeros((task.num_classes, task.dim))
  np.add.at(sums, y, x)
  return sums / np.maximum(np.bincount(y, minlength=task.num_classes), 1)[:, None]


def gmm_run(make_head, *, noise: float, steps: int, seed: int) -> float:
  t0 = time.perf_counter()
  acc = mixture.train_and_eval(
      make_head, num_classes=GMM["num_classes"], dim=GMM["dim"], noise=noise,
      hidden=GMM["hidden"], depth=GMM["depth"], steps=steps,
      batch=GMM["batch"], seed=seed)
  return dict(acc1=acc, wall_seconds=time.perf_counter() - t0)


# ------------------------------------------------------------------ parts
def part_heads(quick: bool, seed: int, log) -> list[dict]:
  rows = []
  heads = (2, 3) if quick else (2, 3, 4)
  for h in heads:
    r = trainer_run("shakespeare", "mhp", {"head.num_heads": h}, quick, seed)
    rows.append(dict(dataset="shakespeare", head="mhp", num_heads=h, **r))
    log(rows[-1])
  if not _SKIP_SHAKESPEARE_VANILLA.value:
    r = trainer_run("shakespeare", "vanilla", {}, quick, seed)
    rows.append(dict(dataset="shakespeare", head="vanilla", num_heads=1, **r))
    log(rows[-1])
  return rows


def _order_runs(runs, quick, seed, log, reuse=None) -> list[dict]:
  """Trainer runs of (dataset, head) for every label order."""
  rows = []
  for dataset, head in runs:
    for order in ORDERS:
      if order == "given" and reuse:
        r = {k: v for k, v in reuse.items()
             if k not in ("dataset", "head", "num_heads")}
      else:
        r = trainer_run(dataset, head, {"head.label_order": order,
                                        "head.label_order_seed": seed},
                        quick, seed)
      rows.append(dict(dataset=dataset, head=head, order=order, **r))
      log(rows[-1])
  return rows


def part_order_delicious(quick: bool, seed: int, log) -> list[dict]:
  rows = _order_runs((("delicious", "mhp"), ("delicious", "mhc")), quick,
                     seed, log)
  r = trainer_run("delicious", "vanilla", {}, quick, seed)
  rows.append(dict(dataset="delicious", head="vanilla", order="-", **r))
  log(rows[-1])
  return rows


def part_order_shakespeare(quick: bool, seed: int, log,
                           heads_rows=()) -> list[dict]:
  """MHP H = 2; reuses part (a)'s 'given' and vanilla runs when present."""
  given = next((r for r in heads_rows
                if r["head"] == "mhp" and r["num_heads"] == 2), None)
  rows = _order_runs((("shakespeare", "mhp"),), quick, seed, log,
                     reuse=given)
  for r in heads_rows:
    if r["head"] == "vanilla":
      rows.append(dict(r, order="-"))
  return rows


def part_order_gmm(quick: bool, seed: int, log) -> list[dict]:
  """The Gaussian mixture, where MHP trails a full softmax."""
  rows = []
  c = GMM["num_classes"]
  codec = LabelCodec.balanced(c, 2)
  for noise, steps in (((1.0, 20),) if quick else GMM_ORDER_SETTINGS):
    centroids = gmm_centroids(noise, seed)
    for order in ORDERS:
      perm = label_order.label_permutation(order, codec, seed=seed + 1,
                                           centroids=centroids)
      cod = codec.with_permutation(perm)
      r = gmm_run(lambda d, rngs, cod=cod: MHPHead(d, cod, rngs=rngs),
                  noise=noise, steps=steps, seed=seed)
      rows.append(dict(dataset=f"gmm noise {noise}", head="mhp", order=order,
                       steps=steps, **r))
      log(rows[-1])
    r = gmm_run(lambda d, rngs: VanillaHead(d, c, rngs=rngs), noise=noise,
                steps=steps, seed=seed)
    rows.append(dict(dataset=f"gmm noise {noise}", head="vanilla", order="-",
                     steps=steps, **r))
    log(rows[-1])
  return rows


def part_low_rank(quick: bool, seed: int, log) -> list[dict]:
  rows = []
  c = GMM["num_classes"]
  steps = 20 if quick else GMM_RANK_STEPS
  for rank in ((4,) if quick else RANKS):
    for loss in LOSSES:
      r = gmm_run(lambda d, rngs, rank=rank, loss=loss: LowRankHead(
          d, c, rank, loss, rngs), noise=GMM_RANK_NOISE, steps=steps,
                  seed=seed)
      rows.append(dict(rank=rank, loss=loss, steps=steps, **r))
      log(rows[-1])
  for loss in LOSSES:  # full rank: no bottleneck (rank = d = 512)
    r = gmm_run(lambda d, rngs, loss=loss: LowRankHead(d, c, d, loss, rngs),
                noise=GMM_RANK_NOISE, steps=steps, seed=seed)
    rows.append(dict(rank=GMM["hidden"], loss=loss, steps=steps, **r))
    log(rows[-1])
  return rows


# ----------------------------------------------------------------- output
def _order_rows(results: dict) -> list[dict]:
  return [r for part in ORDER_PARTS for r in results.get(part, ())]


def _pct(x):
  return "-" if x is None else f"{100 * x:.1f}"


def markdown(results: dict) -> str:
  out = []
  rows = results.get("heads")
  if rows:
    out += ["(a) Shakespeare next word, C = 11,697: MHP accuracy by H "
            "(600 steps; H = 1 is the full softmax).", "",
            "| head | H | radices | acc@1 | acc@5 | classifier params | "
            "model params | train loop s |",
            "|---|---|---|---|---|---|---|---|"]
    for r in rows:
      radices = LabelCodec.balanced(r["num_classes"], r["num_heads"]).radices
      head_params = (SHAKESPEARE_HIDDEN + 1) * sum(radices)
      out.append(f"| {r['head']} | {r['num_heads']} | "
                 f"{' x '.join(map(str, radices))} | {_pct(r.get('acc@1'))} "
                 f"| {_pct(r.get('acc@5'))} | {head_params:,} | "
                 f"{r['num_params']:,} | {r['train_seconds']:.0f} |")
    out.append("")
  rows = _order_rows(results)
  if rows:
    out += ["(b) Label order: given / random / clustered codes, vanilla as "
            "reference.", "",
            "| data | head | steps | given | random | clustered | vanilla | "
            "metric |", "|---|---|---|---|---|---|---|---|"]
    groups = {}
    for r in rows:
      key = (r["dataset"], r.get("steps"))
      groups.setdefault(key, []).append(r)
    for (dataset, steps), grp in groups.items():
      metric = ("P@1 / P@5" if dataset == "delicious" else
                "acc@1 / acc@5" if dataset == "shakespeare" else "acc@1")

      def fmt(r):
        if dataset == "delicious":
          return f"{_pct(r['P@1'])} / {_pct(r['P@5'])}"
        if dataset == "shakespeare":
          return f"{_pct(r['acc@1'])} / {_pct(r['acc@5'])}"
        return _pct(r["acc1"])

      vanilla = next((fmt(r) for r in grp if r["head"] == "vanilla"), "-")
      for head in dict.fromkeys(r["head"] for r in grp if r["head"] != "vanilla"):
        by = {r["order"]: fmt(r) for r in grp if r["head"] == head}
        out.append(f"| {dataset} | {head} | {steps or grp[0].get('steps', '-')} "
                   f"| {by.get('given', '-')} | {by.get('random', '-')} | "
                   f"{by.get('clustered', '-')} | {vanilla} | {metric} |")
    out.append("")
  rows = results.get("low_rank")
  if rows:
    out += ["(c) Rank-r classifier on the Gaussian mixture (C = 2000, noise "
            f"{GMM_RANK_NOISE}): test top-1 accuracy, CE vs squared loss.", "",
            "| rank r | softmax CE | squared loss | rescaled squared loss |",
            "|---|---|---|---|"]
    for rank in dict.fromkeys(r["rank"] for r in rows):
      by = {r["loss"]: r["acc1"] for r in rows if r["rank"] == rank}
      out.append(f"| {rank} | {_pct(by.get('ce'))} | {_pct(by.get('squared'))} "
                 f"| {_pct(by.get('squared_rescaled'))} |")
  return "\n".join(out)


def plot(results: dict, out_dir: pathlib.Path, prefix: str = "claims"
         ) -> list[str]:
  """PNG plots ``<prefix>_{heads,label_order,low_rank}.png`` in out_dir."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  written = []
  rows = results.get("heads")
  if rows:
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    mhp = [r for r in rows if r["head"] == "mhp"]
    hs = [r["num_heads"] for r in mhp]
    for key, style in (("acc@1", "o-"), ("acc@5", "s-")):
      line, = ax.plot(hs, [100 * r[key] for r in mhp], style, label=f"MHP {key}")
      van = next((r for r in rows if r["head"] == "vanilla"), None)
      if van:
        ax.axhline(100 * van[key], ls="--", color=line.get_color(),
                   label=f"vanilla {key}")
    ax.set_xlabel("heads H (C = 11,697 fixed)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_xticks(hs)
    ax.set_title("Shakespeare next word: accuracy vs H")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out_dir / f"{prefix}_heads.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(str(path))
  rows = _order_rows(results)
  if rows:
    panels = list(dict.fromkeys((r["dataset"], r["head"], r.get("steps"))
                                for r in rows if r["head"] != "vanilla"))
    fig, axes = plt.subplots(1, len(panels), figsize=(2.2 * len(panels), 3.2))
    axes = np.atleast_1d(axes)
    for ax, (dataset, head, steps) in zip(axes, panels):
      metric = ("P@1" if dataset == "delicious" else
                "acc@1" if dataset == "shakespeare" else "acc1")
      grp = [r for r in rows
             if r["dataset"] == dataset and r.get("steps") == steps]
      vals = [next((100 * r[metric] for r in grp if r["head"] == head and
                    r["order"] == o), np.nan) for o in ORDERS]
      bars = ax.bar(range(3), vals, color=["#777", "#4a8", "#48c"])
      ax.bar_label(bars, fmt="%.1f", fontsize=6)
      van = next((100 * r[metric] for r in grp if r["head"] == "vanilla"), None)
      if van is not None:
        ax.axhline(van, ls="--", color="k", label="vanilla")
        ax.legend(fontsize=7, loc="best")
      ax.set_xticks(range(3), ORDERS, fontsize=7)
      title = f"{dataset} {head}\n{steps} steps"
      ax.set_title(title, fontsize=8)
      ax.set_ylabel(metric.replace("acc1", "acc@1") + " (%)", fontsize=8)
    fig.tight_layout()
    path = out_dir / f"{prefix}_label_order.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(str(path))
  rows = results.get("low_rank")
  if rows:
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    names = {"ce": "softmax CE", "squared": "squared loss ||Z - Y||^2",
             "squared_rescaled": "rescaled squared (k=15, M=30)"}
    for loss, style in zip(LOSSES, ("o-", "s-", "^-")):
      sel = [r for r in rows if r["loss"] == loss]
      ax.plot([r["rank"] for r in sel], [100 * r["acc1"] for r in sel], style,
              label=names[loss])
    ax.set_xscale("log", base=2)
    ranks = sorted({r["rank"] for r in rows})
    ax.set_xticks(ranks, [str(r) for r in ranks])
    ax.set_xlabel("classifier rank r (C = 2000)")
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.set_title("Rank-limited classifier: CE vs squared loss", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out_dir / f"{prefix}_low_rank.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(str(path))
  return written


def _log(row: dict):
  keys = ("dataset", "head", "num_heads", "order", "rank", "loss", "steps",
          "acc@1", "acc@5", "P@1", "P@5", "acc1", "wall_seconds")
  print("  ".join(f"{k}={row[k]:.4g}" if isinstance(row[k], float) else
                  f"{k}={row[k]}" for k in keys if k in row), flush=True)


def main(argv):
  del argv
  if _MARKDOWN_FROM.value:  # tables and plots from a finished run
    path = pathlib.Path(_MARKDOWN_FROM.value)
    results = json.loads(path.read_text())
    print(markdown(results))
    for written in plot(results, path.parent, path.stem):
      print("wrote", written)
    return
  unknown = set(_PARTS.value) - set(PARTS)
  if unknown:
    raise ValueError(f"--parts: unknown {sorted(unknown)}; known: {list(PARTS)}")
  quick, seed = _QUICK.value, _SEED.value
  out = pathlib.Path(_OUT.value)
  out.parent.mkdir(parents=True, exist_ok=True)
  results = dict(meta=dict(
      benchmark="claims", quick=quick, seed=seed, parts=_PARTS.value,
      jax=jax.__version__, devices=[str(d) for d in jax.devices()],
      cpu_count=os.cpu_count(), machine=platform.machine(),
      time=time.strftime("%Y-%m-%d %H:%M"), load_average_start=os.getloadavg()))
  if _MERGE.value and out.exists():  # keep the other parts of an earlier run
    old = json.loads(out.read_text())
    results = {**old, "meta": {**old.get("meta", {}), **results["meta"],
                               "parts": sorted(set(old["meta"].get("parts", []))
                                               | set(_PARTS.value))}}
  t0 = time.perf_counter()
  runs = dict(heads=part_heads, order_delicious=part_order_delicious,
              order_gmm=part_order_gmm, low_rank=part_low_rank)
  for part in PARTS:
    if part not in _PARTS.value:
      continue
    if part == "order_shakespeare":
      results[part] = part_order_shakespeare(quick, seed, _log,
                                             results.get("heads", ()))
    else:
      results[part] = runs[part](quick, seed, _log)
    out.write_text(json.dumps(results, indent=1))  # after every part
  results["meta"].setdefault("part_wall_seconds", {})[
      ",".join(_PARTS.value)] = time.perf_counter() - t0
  results["meta"].update(load_average_end=os.getloadavg())
  out.write_text(json.dumps(results, indent=1))
  print(markdown(results))
  for path in plot(results, out.parent, out.stem):
    print("wrote", path)
  print("wrote", out)


if __name__ == "__main__":
  app.run(main)
