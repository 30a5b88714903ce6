"""Next-item evaluation of a trained sequence model (leave-one-out data).

For a dataset whose eval source is a
:class:`~mhe_jax.data.pipeline.SequenceEvalSource` the trainer's
``evaluate`` calls :func:`evaluate`, which reports, per user (one held-out
target each, the last input position's features):

* full ranking over all C items: ``HR@k`` and ``NDCG@k`` for ``k`` in
  ``config.eval.ks``. With ``config.eval.exclude_history`` the items of the
  user's input sequence are removed from the ranking: the head decodes its
  top ``k_max + Hmax`` (``Hmax`` the longest input of the split) and the
  input items are dropped (:func:`mhe_jax.metrics.drop_excluded`), exact
  for MHP and never building ``C`` scores; MHC decodes within its beam
  (``k`` capped at its ``max_k``). The full classifiers (vanilla, MHS) rank
  their ``[B, C]`` logits with the input items set to ``-inf``. A target
  that repeats an item of its own input (repeat consumption) cannot be hit
  with exclusion on.
* the BERT4Rec protocol, labelled ``sampled/HR@k`` and ``sampled/NDCG@k``:
  the target ranked among ``config.eval.num_negatives`` items drawn by
  popularity (:func:`mhe_jax.data.interactions.popularity_negatives`, fixed
  ``config.eval.negatives_seed``; items of the input excluded), scored with
  :meth:`mhe_jax.nn.models.Classifier.label_scores` (101 scores per user).
  Ties rank the target below the negative.

Example::

  trainer = train.Trainer(config, workdir)      # data.name='amazon_beauty'
  results = trainer.evaluate(state)             # dispatches here
  results["HR@10"], results["sampled/HR@10"]
"""

from __future__ import annotations

from typing import Any

from flax import nnx
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from mhe_jax import metrics as metrics_lib
from mhe_jax.data import interactions
from mhe_jax.data import pipeline
from mhe_jax.nn import heads


# Heads whose [B, C] logits are one matmul: ranked densely with the history
# masked (faster on CPU than a top-(k + Hmax) stream over class chunks).
_FULL_CLASSIFIERS = (heads.VanillaHead, heads.MHSHead)


def _dense_topk_excluding(model, batch, k: int) -> jax.Array:
  """int32 ``[B, k]``: top-k of the full logits, input items set to -inf."""
  logits_bc = model.head(model.features(batch)[:, -1]).astype(jnp.float32)
  c = logits_bc.shape[-1]
  history_bh = jnp.where(batch["history"] >= 0, batch["history"], c)
  masked_bc = jax.vmap(lambda s_c, h: s_c.at[h].set(-jnp.inf, mode="drop"))(
      logits_bc, history_bh)
  return jax.lax.top_k(masked_bc, k)[1].astype(jnp.int32)


class NextItemEvaluator:
  """Jitted decode + host-side metrics over a trainer's eval split.

  Args:
    trainer: a :class:`mhe_jax.train.Trainer` whose ``data.eval`` is a
      :class:`~mhe_jax.data.pipeline.SequenceEvalSource`.
  """

  def __init__(self, trainer: Any):
    source = trainer.data.eval
    if not isinstance(source, pipeline.SequenceEvalSource):
      raise ValueError("next-item evaluation needs a SequenceEvalSource, got "
                       f"{type(source).__name__}")
    cfg = trainer.config.eval
    self.trainer = trainer
    self.source = source
    num_items = trainer.data.num_classes
    self.ks = tuple(k for k in trainer.ks if k <= num_items)
    self.k_max = max(self.ks)
    self.exclude = bool(cfg.exclude_history)
    self.k_fetch = min(num_items, self.k_max + (source.max_history
                                                if self.exclude else 0))
    self.num_negatives = int(cfg.num_negatives)
    self.negatives = None
    if self.num_negatives:
      self.negatives = interactions.popularity_negatives(
          source.item_counts, source.examples, self.num_negatives,
          int(cfg.negatives_seed))
    self._decode = jax.jit(self._decode_fn)

  def _decode_fn(self, state, batch):
    model, _ = nnx.merge(self.trainer.graphdef, state)
    if self.exclude and isinstance(model.head, _FULL_CLASSIFIERS):
      labels_bk = _dense_topk_excluding(model, batch, self.k_max)
    else:
      k_fetch = min(self.k_fetch, getattr(model.head, "max_k", self.k_fetch))
      labels_bk = model.topk(batch, k_fetch)[1]
      k = min(self.k_max, k_fetch)
      if self.exclude:
        labels_bk = metrics_lib.drop_excluded(labels_bk, batch["history"], k)
      else:
        labels_bk = labels_bk[:, :k]
    sampled = None
    if "negatives" in batch:
      target_b1 = jnp.maximum(batch["labels"], 0)[:, None]
      sampled = model.label_scores(
          batch, jnp.concatenate([target_b1, batch["negatives"]], axis=1))
    return labels_bk, sampled

  def evaluate(self, state) -> dict[str, float]:
    """HR@k / NDCG@k (full ranking) and, with negatives, ``sampled/...``."""
    trainer = self.trainer
    full = metrics_lib.NextItemMetrics(self.ks)
    sampled = metrics_lib.NextItemMetrics(self.ks, prefix="sampled/")
    loader = pipeline.eval_loader(self.source, trainer.config.eval_batch_size,
                                  num_threads=0)
    for batch in loader:
      if self.negatives is not None:
        rows = np.maximum(batch["index"], 0)
        batch = dict(batch, negatives=self.negatives[rows])
      dev = trainer.device_batch(batch)
      with jax.set_mesh(trainer.mesh):
        pred_bk, scores_bn = self._decode(state, dev)
      labels, mask = dev["labels"], dev["mask"]
      if jax.process_count() > 1:
        pred_bk, scores_bn, labels, mask = multihost_utils.process_allgather(
            (pred_bk, scores_bn, labels, mask), tiled=True)
      labels, mask = np.asarray(labels), np.asarray(mask)
      full.update(metrics_lib.target_ranks(np.asarray(pred_bk), labels), mask)
      if scores_bn is not None:
        scores_bn = np.asarray(scores_bn)
        sampled.update(metrics_lib.sampled_ranks(scores_bn[:, 0],
                                                 scores_bn[:, 1:]), mask)
    out = full.compute()
    if self.negatives is not None:
      out.update(sampled.compute())
    return out


def evaluate(trainer: Any, state) -> dict[str, float]:
  """:meth:`NextItemEvaluator.evaluate`, the evaluator kept on ``trainer``."""
  evaluator = getattr(trainer, "_next_item_evaluator", None)
  if evaluator is None:
    evaluator = NextItemEvaluator(trainer)
    trainer._next_item_evaluator = evaluator  # pylint: disable=protected-access
  return evaluator.evaluate(state)
