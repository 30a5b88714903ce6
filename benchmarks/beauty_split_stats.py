r"""Amazon Beauty leave-one-out: how the validation and test targets differ.

Model-free statistics of the two evaluation sets of
:func:`mhe_jax.data.interactions.leave_one_out` on
``<data root>/amazon_beauty/interactions.txt`` (per user: the last item is
the test target with every earlier item as input; the second-to-last item is
the validation target with every item before it as input; training histories
are all but the last two items), with numpy only:

* repeats: the share of targets that are an item of the example's own input.
  With the seen-item filter of the full-ranking protocol such a target can
  never be hit, whatever the model;
* cold targets: the share of targets that are never a training target (the
  items ``h[1:]`` of the training histories, what a next-item model is fitted
  to) and never in a training history at all;
* target popularity: the median and mean training-target count of the
  targets, and the share among the 100 / 1,000 most frequent training
  targets;
* the last input item: the share of examples whose last input item is never
  followed by another item in the training histories, and whose target
  follows that item somewhere in the training histories;
* two baselines ranked over all items with the input items excluded (ties
  broken by the lower item id), HR@10 / NDCG@10:
  - ``popularity``: items by training-target count;
  - ``last-item transitions``: items by how often they follow the input's
    last item in the training histories, then by training-target count;
  - ``recent popularity``: items by their count among the items one step
    before the targets (every user's last training item for validation,
    every user's validation item for test), a check of drift over time.

Each baseline is fitted on the training histories only, as the models are
(``train``). The test examples are also scored with the counts of the
training histories extended by every user's validation item (``train+val``),
the data a test-time model could be fitted to.

  python benchmarks/beauty_split_stats.py            # table on stdout
  python benchmarks/beauty_split_stats.py --json=/tmp/beauty_stats.json
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

import numpy as np
import scipy.sparse as sp

from mhe_jax.data import interactions

K = 10


def data_root(data_dir: str | None) -> pathlib.Path:
  if data_dir:
    return pathlib.Path(data_dir)
  if os.environ.get("MHE_DATA_DIR"):
    return pathlib.Path(os.environ["MHE_DATA_DIR"])
  return pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


def target_counts(histories: interactions.Sequences, num_items: int):
  """int64 ``[C]``: how often each item is a next-item target (``h[1:]``)."""
  keep = np.ones(histories.values.shape[0], bool)
  keep[histories.offsets[:-1][histories.lengths > 0]] = False
  return np.bincount(histories.values[keep], minlength=num_items)


def transitions(histories: interactions.Sequences, num_items: int):
  """CSR ``[C, C]``: entry (a, b) counts a followed directly by b."""
  v, o = histories.values, histories.offsets
  nxt = np.ones(v.shape[0], bool)
  nxt[o[1:][histories.lengths > 0] - 1] = False  # a history's last item
  src = np.flatnonzero(nxt)
  return sp.csr_matrix((np.ones(src.size), (v[src], v[src + 1])),
                       shape=(num_items, num_items))


def extend(histories: interactions.Sequences, users: np.ndarray,
           items: np.ndarray) -> interactions.Sequences:
  """``histories`` (one per dense user) with ``items[i]`` appended to user
  ``users[i]``."""
  seqs = histories.to_lists()
  for u, item in zip(users.tolist(), items.tolist()):
    seqs[u].append(item)
  return interactions.Sequences.from_lists(seqs)


def ranks(examples: interactions.EvalExamples, pop: np.ndarray,
          trans: sp.csr_matrix | None) -> np.ndarray:
  """0-based rank of each target over all items, input items excluded.

  Items are ordered by ``trans[last input item]`` (if given), then ``pop``,
  then lower id first. A target among its input items gets rank C.
  """
  c = pop.shape[0]
  # Global order by popularity, then id: position of every item.
  order = np.lexsort((np.arange(c), -pop))
  pos = np.empty(c, np.int64)
  pos[order] = np.arange(c)
  out = np.empty(len(examples), np.int64)
  for i in range(len(examples)):
    seen = np.unique(examples.inputs.sequence(i))
    t = int(examples.targets[i])
    if t in set(seen.tolist()):
      out[i] = c
      continue
    row_items = np.zeros(0, np.int64)
    row_vals = np.zeros(0)
    if trans is not None:
      last = int(examples.inputs.sequence(i)[-1])
      lo, hi = trans.indptr[last], trans.indptr[last + 1]
      row_items, row_vals = trans.indices[lo:hi], trans.data[lo:hi]
      keep = ~np.isin(row_items, seen)
      row_items, row_vals = row_items[keep], row_vals[keep]
    t_val = row_vals[row_items == t].sum() if row_items.size else 0.0
    if t_val > 0:
      # Ahead: items with more transitions, or as many and earlier by pos.
      ahead = ((row_vals > t_val)
               | ((row_vals == t_val) & (pos[row_items] < pos[t])))
      out[i] = int(ahead.sum())
    else:
      # Ahead: every item with a transition, then the zero-transition
      # items earlier in the popularity order (the input items removed).
      earlier_seen = np.count_nonzero(pos[seen] < pos[t])
      earlier_row = np.count_nonzero(pos[row_items] < pos[t])
      out[i] = row_items.size + pos[t] - earlier_seen - earlier_row
  return out


def hr_ndcg(rank: np.ndarray, k: int = K) -> tuple[float, float]:
  hit = rank < k
  gain = np.where(hit, 1.0 / np.log2(np.minimum(rank, k) + 2.0), 0.0)
  return float(hit.mean()), float(gain.mean())


def stats(examples: interactions.EvalExamples, train_tc: np.ndarray,
          train_any: np.ndarray, trans: sp.csr_matrix) -> dict[str, float]:
  t = examples.targets
  last = examples.inputs.values[examples.inputs.offsets[1:] - 1]
  repeat = np.array([t[i] in set(examples.inputs.sequence(i).tolist())
                     for i in range(len(examples))])
  counts = train_tc[t]
  top = np.argsort(-train_tc, kind="stable")
  return {
      "examples": len(examples),
      "input_length_mean": float(examples.inputs.lengths.mean()),
      "target_in_input": float(repeat.mean()),
      "target_never_a_training_target": float((counts == 0).mean()),
      "target_not_in_training_histories": float((train_any[t] == 0).mean()),
      "target_training_count_median": float(np.median(counts)),
      "target_training_count_mean": float(counts.mean()),
      "target_in_top100_training": float(np.isin(t, top[:100]).mean()),
      "target_in_top1000_training": float(np.isin(t, top[:1000]).mean()),
      "last_input_item_never_followed": float(
          (np.diff(trans.indptr)[last] == 0).mean()),
      "target_follows_last_input_item": float(
          (np.asarray(trans[last, t]).ravel() > 0).mean()),
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data_dir", default=None, help="data root holding "
                      "amazon_beauty/interactions.txt (default: "
                      "$MHE_DATA_DIR, else ../shared/data)")
  parser.add_argument("--json", default=None,
                      help="also write the figures here")
  args = parser.parse_args(argv)
  path = data_root(args.data_dir) / "amazon_beauty" / "interactions.txt"
  log = interactions.read_interactions(path)
  split = interactions.leave_one_out(log)
  c = split.num_items
  val, test = split.validation, split.test
  train = split.train
  # leave_one_out keeps every user for training ('train' policy): history u
  # is dense user u.
  assert np.array_equal(split.train_users, np.arange(log.num_users))
  train_tc = target_counts(train, c)
  train_any = np.bincount(train.values, minlength=c)
  trans = transitions(train, c)
  train_val = extend(train, val.users, val.targets)
  tv_tc = target_counts(train_val, c)
  tv_trans = transitions(train_val, c)

  out = {"file": str(path), "summary": split.summary(),
         "validation": stats(val, train_tc, train_any, trans),
         "test": stats(test, train_tc, train_any, trans)}
  base = {}
  for name, pop, tr in (("popularity", train_tc, None),
                        ("last-item transitions", train_tc, trans)):
    base[f"{name} / validation / train"] = hr_ndcg(ranks(val, pop, tr))
    base[f"{name} / test / train"] = hr_ndcg(ranks(test, pop, tr))
  base["popularity / test / train+val"] = hr_ndcg(ranks(test, tv_tc, None))
  # Recent popularity: the items one step before the targets, every user's
  # last training item (for validation) or validation item (for test).
  last_train = train.values[train.offsets[1:][train.lengths > 0] - 1]
  base["recent popularity / validation / last training items"] = hr_ndcg(
      ranks(val, np.bincount(last_train, minlength=c), None))
  base["recent popularity / test / validation items"] = hr_ndcg(
      ranks(test, np.bincount(val.targets, minlength=c), None))
  base["last-item transitions / test / train+val"] = hr_ndcg(
      ranks(test, tv_tc, tv_trans))
  out["baselines_hr10_ndcg10"] = base

  print(f"{path}: {out['summary']}")
  keys = list(out["validation"])
  print(f"{'statistic':36s} {'validation':>12s} {'test':>12s}")
  for key in keys:
    v, t = out["validation"][key], out["test"][key]
    fmt = (lambda x: f"{x:12d}") if isinstance(v, int) else (
        lambda x: f"{x:12.4f}")
    print(f"{key:36s} {fmt(v)} {fmt(t)}")
  print(f"\n{'baseline / split / fitted on':56s} {'HR@10':>8s} {'NDCG@10':>8s}")
  for key, (hr, ndcg) in base.items():
    print(f"{key:56s} {hr:8.4f} {ndcg:8.4f}")
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(out, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
