r"""One trained Amazon Beauty model scored on both leave-one-out targets.

Restores the newest checkpoint of a ``configs/amazon_beauty.py`` training
workdir and evaluates those parameters twice with the trainer's own next-item
evaluation (:mod:`mhe_jax.sequence_eval`: full ranking over all items, input
items excluded): on the validation examples (input: all but the user's last
two items, target: the second-to-last item) and on the test examples (input:
all but the last item, target: the last item), the same users in both. Prints
HR@k / NDCG@k per split; per split HR@10 / NDCG@10 on the users whose
target is never a training target, and on the others; per split the share
of targets and HR@10 by the target's training-target count (bins
``POPULARITY_BINS``); the shares of users hit (HR@10) on both splits or on
one; and the test HR@10 reweighted to the validation targets' mix of those
bins (how much of the difference the targets' popularity accounts for).

  python -m mhe_jax.main --config=configs/amazon_beauty.py \
      --workdir=/tmp/beauty_vt --config.num_train_steps=3000
  python benchmarks/beauty_val_test.py --workdir=/tmp/beauty_vt \
      --steps=3000 --json=/tmp/beauty_val_test.json

``--config_arg`` is the config's argument (empty: ``best``), ``--set``
the overrides and ``--steps`` the ``num_train_steps`` the workdir was
trained with; the checkpoint must be of that config. With ``--json`` the per-user 0-based
target ranks go next to it (``*.ranks_validation.npy``,
``*.ranks_test.npy``; rank 2**31 - 1: not among the predictions).
"""

from __future__ import annotations

import argparse
import ast
import json
import pathlib
import sys

import jax
import numpy as np

from mhe_jax import config_lib
from mhe_jax import metrics as metrics_lib
from mhe_jax import registry
from mhe_jax import sequence_eval
from mhe_jax import train as train_lib
from mhe_jax.data import interactions
from mhe_jax.data import pipeline

REPO = pathlib.Path(__file__).resolve().parents[1]

# Bins of an item's training-target count (the last bin is open).
POPULARITY_BINS = (0, 1, 3, 6, 11, 21, 51, 101, 2**62)


def bin_name(b: int) -> str:
  """``'[lo,hi)'`` of bin ``b`` of POPULARITY_BINS (``hi`` 'inf' for the
  last)."""
  last = b + 2 == len(POPULARITY_BINS)
  return f"[{POPULARITY_BINS[b]},{'inf' if last else POPULARITY_BINS[b + 1]})"


def per_example_ranks(trainer, state) -> np.ndarray:
  """0-based full-ranking rank of each eval example's target (input items
  excluded), as :class:`sequence_eval.NextItemEvaluator` computes them."""
  evaluator = sequence_eval.NextItemEvaluator(trainer)
  evaluator.negatives = None  # full ranking only
  source = trainer.data.eval
  out = np.full(len(source), -1, np.int64)
  loader = pipeline.eval_loader(source, trainer.config.eval_batch_size,
                                num_threads=0)
  for batch in loader:
    dev = trainer.device_batch(batch)
    with jax.set_mesh(trainer.mesh):
      # pylint: disable-next=protected-access
      pred_bk, _ = evaluator._decode(state, dev)
    ranks = metrics_lib.target_ranks(np.asarray(pred_bk), batch["labels"])
    keep = np.asarray(batch["mask"], bool)
    out[np.asarray(batch["index"])[keep]] = ranks[keep]
  if (out < 0).any():
    raise AssertionError("an example was not evaluated")
  return out


def summarize(ranks: np.ndarray, ks) -> dict[str, float]:
  acc = metrics_lib.NextItemMetrics(ks)
  acc.update(ranks)
  return acc.compute()


def evaluate_both(config, workdir) -> dict:
  """Metrics of the newest checkpoint in ``workdir`` on both splits.

  Returns ``{"step", "validation", "test", "<split>/cold_targets",
  "<split>/warm_targets", "ranks": {split: int64 [N]}}``.
  """
  workdir = pathlib.Path(workdir)
  trainer = train_lib.Trainer(config, workdir)
  saved = workdir / "label_permutation.npy"
  if trainer.data.label_permutation is not None and saved.exists():
    if not np.array_equal(np.load(saved), trainer.data.label_permutation):
      raise AssertionError("the clustered item order differs from the run's")
  restored = trainer.checkpointer.restore_latest(trainer.abstract_state)
  trainer.checkpointer.close()
  if restored is None:
    raise FileNotFoundError(f"no checkpoint in {workdir}")
  step, state, _ = restored
  state = trainer.eval_state(state)  # the parameters' average, if kept
  split = interactions.leave_one_out(interactions.read_interactions(
      registry.data_root(config.data) / config.data.name / "interactions.txt"))
  train_tc = trainer.data.train.target_counts(split.num_items)
  out = {"step": int(step), "ranks": {}}
  for name, examples in (("validation", split.validation),
                         ("test", split.test)):
    trainer.data.eval = pipeline.SequenceEvalSource(
        examples, config.data.max_len, item_counts=split.item_counts)
    ranks = per_example_ranks(trainer, state)
    cold = train_tc[examples.targets] == 0
    out[name] = summarize(ranks, trainer.ks)
    out[name + "/cold_targets"] = {"share": float(cold.mean()),
                                   **summarize(ranks[cold], (10,))}
    out[name + "/warm_targets"] = summarize(ranks[~cold], (10,))
    out["ranks"][name] = ranks
    bins = np.digitize(train_tc[examples.targets], POPULARITY_BINS) - 1
    out[name + "/by_target_count"] = {
        bin_name(b): {"share": float((bins == b).mean()),
                      "HR@10": (float((ranks[bins == b] < 10).mean())
                                if (bins == b).any() else None)}
        for b in range(len(POPULARITY_BINS) - 1)}
  hit_v, hit_t = out["ranks"]["validation"] < 10, out["ranks"]["test"] < 10
  out["paired_hits@10"] = {"both": float((hit_v & hit_t).mean()),
                           "validation_only": float((hit_v & ~hit_t).mean()),
                           "test_only": float((~hit_v & hit_t).mean())}
  # Test HR@10 with the validation targets' mix of training-target counts.
  # None when a bin of validation targets has no test target.
  cells = [(v["share"], t["HR@10"]) for v, t in zip(
      out["validation/by_target_count"].values(),
      out["test/by_target_count"].values()) if v["share"]]
  out["test_HR@10_at_validation_popularity_mix"] = (
      None if any(hr is None for _, hr in cells)
      else float(sum(share * hr for share, hr in cells)))
  return out


def parse_overrides(texts) -> dict:
  """``['encoder.dropout=0.2', 'encoder.block_layout=pre_ln']`` ->
  ``{'encoder.dropout': 0.2, 'encoder.block_layout': 'pre_ln'}``."""
  overrides = {}
  for text in texts:
    if "=" not in text:
      raise ValueError(f"--set={text!r} is not KEY=VALUE")
    key, value = text.split("=", 1)
    try:
      overrides[key.strip()] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      overrides[key.strip()] = value  # a bare string such as pre_ln
  return overrides


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True, help="training workdir")
  parser.add_argument("--config_arg", default="", help="configs/"
                      "amazon_beauty.py argument (empty: the default, best)")
  parser.add_argument("--steps", type=int, default=0, help="num_train_steps "
                      "of the run (0: the config's)")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="a config override the run was trained with "
                      "(repeatable), e.g. --set=encoder.dropout=0.2")
  parser.add_argument("--json", default=None,
                      help="also write the figures here")
  args = parser.parse_args(argv)
  config = config_lib.from_file(REPO / "configs" / "amazon_beauty.py",
                                args.config_arg or None)
  config = config_lib.override(config, parse_overrides(args.set))
  if args.steps:
    config.num_train_steps = args.steps
  result = evaluate_both(config, args.workdir)
  ranks = result.pop("ranks")
  result = {"workdir": args.workdir, "config": config.name, **result}
  print(json.dumps(result, indent=1))
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(result, indent=1))
    for name, r in ranks.items():
      np.save(pathlib.Path(args.json).with_suffix(f".ranks_{name}.npy"), r)
  return 0


if __name__ == "__main__":
  sys.exit(main())
