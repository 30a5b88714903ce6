"""UniDEC: one encoder for documents and labels, plus per-label classifiers.

Kharbanda et al., 2024, "Unified Dual Encoder and Classifier Training for
Extreme Multi-Label Classification". The model the trainer builds for
``config.head.type='unidec'``; it has the trainer's model interface
(``loss(batch, *, rng, train)``, ``topk(batch, k)``), like
:class:`mhe_jax.nn.models.Classifier`.

Maths (``^`` = L2-normalised, ``s`` = ``logit_scale``):

* Query ``q^ = f(x)^`` from the shared encoder ``f`` (a
  :class:`~mhe_jax.nn.encoders.SparseMLPEncoder`); label embedding
  ``e^_l = f(z_l)^`` of the label's feature row ``z_l`` (hashed name n-grams
  and/or mean features, :mod:`mhe_jax.data.label_features`, stored as fixed
  ``[C, F_l]`` ids/values); classifier vector ``w^_l`` (a free parameter).
* Training step: pick up to ``num_picked`` positives per example
  (:func:`mhe_jax.ops.losses.pick_some_labels`); the candidates are the
  union over the batch of the picked positives and of each example's
  ``num_hard_negatives`` shortlisted labels (nearest to ``q^`` in the label
  index, see below), so every example is scored against the others'
  positives (in-batch negatives) and the hard negatives. The loss is PSL
  (:func:`mhe_jax.ops.losses.psl`) on the dual-encoder scores
  ``s <q^, e^_m>`` plus PSL on the classifier scores ``s <q^, w^_m>``.
  With ``label_to_query=True`` the dual-encoder term is symmetric, as in
  the paper: each picked label also gets PSL over the batch's queries
  (:func:`label_to_query_psl`). On the validation splits it moved P@1 by
  -0.7 (Bibtex) and +0.1 (Delicious), so it is off by default.
* Label index: a snapshot of ``v_l = score_mix * e^_l + (1 - score_mix) *
  w^_l`` and of ``e^_l``, rebuilt every ``refresh_every`` training steps
  inside the jitted step (``jax.lax.cond`` on a step counter held in the
  model, so it is saved with checkpoints) and once at construction. It is
  searched exactly (:func:`mhe_jax.ops.shortlist.exact_search`) or with the
  balanced k-means index (:func:`~mhe_jax.ops.shortlist.kmeans_search`).
* Inference: the ``shortlist_size`` labels of largest ``<q^, v_l>`` from the
  index, re-scored as ``score_mix * <q^, e^_l> + (1 - score_mix) *
  <q^, w^_l>`` with the snapshot's ``e^_l`` and the current ``w^_l`` (the
  weighted sum of the two cosines; ``<q^, v_l>`` is the same sum at the
  snapshot, so the shortlist is exact for it with the exact index); the top
  k of the shortlist are returned.
* Sharding: the shortlist computations (label search, the batch-wide
  candidate union, gathers of label rows by batch-derived ids) run
  replicated (:func:`mhe_jax.sharding.replicated`) after the data-parallel
  encoder: an all-gather of ``[B, d]`` features, and the candidate set is
  global to the batch anyway. Per-label tables sharded over a ``classes``
  mesh axis are all-gathered before their rows are gathered (class sharding
  then saves memory at rest, not in the step).

Example::

  model = DualEncoderClassifier(encoder, ("feature_ids", "feature_values"),
                                label_ids_cf, label_values_cf,
                                rngs=nnx.Rngs(0))
  loss = model.loss(batch, rng=jax.random.key(0))
  scores_bk, labels_bk = model.topk(batch, 5)
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from mhe_jax.ops import losses
from mhe_jax.ops import shortlist
from mhe_jax.sharding import replicated

ArrayLike = jax.typing.ArrayLike

INDEX_KINDS = ("exact", "kmeans")
_MASKED = -1e9  # score of a padding candidate (exp underflows to 0)


class IndexState(nnx.Variable):
  """Label-index snapshot arrays; rebuilt in the step, never trained."""


class LabelFeatures(nnx.Variable):
  """Fixed ``[C, F_l]`` label feature ids / values; not trained."""


class StepCount(nnx.Variable):
  """Training steps taken by the model (drives refreshes and phases)."""


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
  norm = jnp.sqrt(jnp.sum(x * x, axis=axis, keepdims=True))
  return x / jnp.maximum(norm, 1e-12)


def check_positive(**values: int) -> None:
  """Raises ValueError naming the first of ``values`` below 1."""
  for name, value in values.items():
    if value < 1:
      raise ValueError(f"{name} must be >= 1, got {value}")


def encode(encoder: nnx.Module, input_keys: tuple[str, ...],
           batch: Mapping[str, Any], *, train: bool) -> jax.Array:
  """float32 ``[B, d]``: ``encoder`` on the batch's ``input_keys``,
  replicated (module docstring)."""
  x = encoder(*(batch[k] for k in input_keys), train=train)
  return replicated(x).astype(jnp.float32)


class LabelIndex(nnx.Module):
  """A searchable snapshot of ``[C, d]`` label vectors (exact or k-means).

  Args:
    num_labels: C.
    dim: d.
    kind: ``'exact'`` or ``'kmeans'``.
    num_clusters: k-means clusters K (a power of two); 0: the power of two
      nearest ``sqrt(C)``.
    num_probe: clusters searched per query (k-means).
    min_results: the largest k the index will be searched for; for k-means,
      raises unless every probe set holds that many labels.
    block_size: labels per block of the exact search.
  """

  def __init__(self, num_labels: int, dim: int, *, kind: str = "exact",
               num_clusters: int = 0, num_probe: int = 8,
               min_results: int = 1, block_size: int = 8192):
    if kind not in INDEX_KINDS:
      raise ValueError(f"unknown label index {kind!r}; known: "
                       f"{list(INDEX_KINDS)}")
    self.kind = kind
    self.num_labels = int(num_labels)
    self.block_size = int(block_size)
    if not 1 <= min_results <= num_labels:
      raise ValueError(f"shortlist sizes must be in [1, {num_labels}] (the "
                       f"number of labels), got {min_results}")
    self.vectors = IndexState(jnp.zeros((num_labels, dim), jnp.float32))
    if kind == "kmeans":
      k = num_clusters or shortlist.default_num_clusters(num_labels)
      slots = -(-num_labels // k)
      reachable = min(num_probe, k) * slots - (k * slots - num_labels)
      if num_probe > k or reachable < min_results:
        raise ValueError(
            f"k-means index with {k} clusters of {slots} slots: num_probe="
            f"{num_probe} must be <= {k} and reach at least {min_results} "
            f"labels (reaches {reachable}); raise head.index_probe or lower "
            "head.shortlist_size / head.num_hard_negatives")
      self.num_probe = int(num_probe)
      self.centroids = IndexState(jnp.zeros((k, dim), jnp.float32))
      self.members = IndexState(jnp.zeros((k, slots), jnp.int32))

  def build(self, vectors_cd: jax.Array) -> tuple[jax.Array, ...]:
    """The index arrays for ``vectors_cd`` (pure; see :meth:`assign`)."""
    vectors_cd = jax.lax.stop_gradient(vectors_cd.astype(jnp.float32))
    if self.kind == "exact":
      return (vectors_cd,)
    index = shortlist.build_kmeans_index(vectors_cd,
                                         self.centroids.shape[0])
    return (vectors_cd, index.centroids, index.members)

  def arrays(self) -> tuple[jax.Array, ...]:
    if self.kind == "exact":
      return (self.vectors[...],)
    return (self.vectors[...], self.centroids[...], self.members[...])

  def assign(self, arrays: tuple[jax.Array, ...]) -> None:
    self.vectors[...] = arrays[0]
    if self.kind == "kmeans":
      self.centroids[...] = arrays[1]
      self.members[...] = arrays[2]

  def refresh_if(self, pred: jax.Array,
                 make_vectors: Callable[[], jax.Array]) -> None:
    """Rebuilds from ``make_vectors()`` when ``pred`` (a traced bool)."""
    rebuilt = lambda: tuple(map(replicated, self.build(make_vectors())))
    self.assign(jax.lax.cond(pred, rebuilt, self.arrays))

  def search(self, queries_qd: jax.Array, k: int
             ) -> tuple[jax.Array, jax.Array]:
    """``(scores [Q, k], ids [Q, k])`` of the largest ``<q, v_l>``."""
    queries_qd = jax.lax.stop_gradient(queries_qd)
    if self.kind == "exact":
      return shortlist.exact_search(queries_qd, self.vectors[...], k,
                                    block_size=self.block_size)
    index = shortlist.KMeansIndex(self.centroids[...], self.members[...])
    return shortlist.kmeans_search(index, self.vectors[...], queries_qd, k,
                                   num_probe=self.num_probe)

  def shortlist_topk(self, queries_bd: jax.Array, k: int, shortlist_size: int,
                     score: Callable[[jax.Array], jax.Array]
                     ) -> tuple[jax.Array, jax.Array]:
    """The top k of each query's shortlist, ranked by ``score``.

    Args:
      queries_bd: ``[B, d]`` search queries.
      k: labels returned per query.
      shortlist_size: labels searched per query (at least ``min(k, C)``).
      score: ids ``[B, S]`` (-1 where the index found fewer) -> scores
        ``[B, S]``, ``-inf`` at -1.

    Returns:
      ``(scores [B, k], labels [B, k])``.
    """
    size = max(shortlist_size, min(k, self.num_labels))
    _, short_bs = self.search(queries_bd, size)
    top_s, pos = jax.lax.top_k(score(short_bs), k)
    return top_s, jnp.take_along_axis(short_bs, pos, axis=1)


def batch_labels(batch: Mapping[str, Any]) -> jax.Array:
  """int ``[B, L]`` labels, replicated (``[B]`` batches become ``[B, 1]``)."""
  labels = replicated(jnp.asarray(batch["labels"], jnp.int32))
  return labels[:, None] if labels.ndim == 1 else labels


def label_to_query_psl(s_bm: jax.Array, positives_bm: jax.Array,
                       picked_bm: jax.Array,
                       where: ArrayLike | None) -> jax.Array:
  """PSL in the label -> query direction, mean over the picked labels.

  Each candidate label m that some valid example picked is a query over the
  batch's valid examples: its picked examples are the positives (one
  softmax term each), the examples that do not hold m the negatives, and
  other holders of m are left out (PSL's rule, transposed). Labels nobody
  picked (hard negatives only) contribute nothing.
  """
  valid_b = (jnp.ones(s_bm.shape[0], bool) if where is None
             else jnp.asarray(where, bool))
  s_mb = jnp.where(valid_b[None, :], s_bm.T, _MASKED)
  positives_mb = positives_bm.T & valid_b[None, :]
  picked_mb = picked_bm.T & positives_mb
  return losses.masked_mean(losses.psl(s_mb, positives_mb, picked_mb),
                            picked_mb.any(axis=1))


def in_batch_psl(q_bd: jax.Array, labels_bl: jax.Array, hard_bs: jax.Array,
                 rng: jax.Array, num_picked: int, num_labels: int,
                 tables: tuple[Callable[[jax.Array], jax.Array], ...],
                 logit_scale: float, where: ArrayLike | None,
                 label_to_query: tuple[bool, ...] = ()) -> jax.Array:
  """Mean PSL over the batch for each label table, summed over tables.

  The candidates are the batch's picked positives and the hard negatives
  ``hard_bs`` (union, shared by all examples); ``tables`` map candidate ids
  ``[M]`` (>= 0) to normalised vectors ``[M, d]``. Where
  ``label_to_query[i]`` is true, table i's loss also gets
  :func:`label_to_query_psl` on the same scores (UniDEC's symmetric loss).
  """
  if len(label_to_query) not in (0, len(tables)):
    raise ValueError(f"label_to_query has {len(label_to_query)} entries for "
                     f"{len(tables)} tables")
  picked_bk = losses.pick_some_labels(labels_bl, num_picked, rng)
  size = min(num_labels, picked_bk.size + hard_bs.size)
  cand_m = shortlist.candidate_union(
      jnp.concatenate([picked_bk, hard_bs], axis=1), size)
  positives_bm = shortlist.membership(cand_m, labels_bl)
  picked_bm = shortlist.membership(cand_m, picked_bk)
  safe_m = jnp.maximum(cand_m, 0)
  total = 0.
  for i, table in enumerate(tables):
    s_bm = logit_scale * (q_bd @ table(safe_m).T)
    s_bm = jnp.where(cand_m >= 0, s_bm, _MASKED)
    total = total + losses.masked_mean(
        losses.psl(s_bm, positives_bm, picked_bm), where)
    if label_to_query and label_to_query[i]:
      total = total + label_to_query_psl(s_bm, positives_bm, picked_bm, where)
  return total


class DualEncoderClassifier(nnx.Module):
  """UniDEC: shared encoder for documents and labels, classifier, PSL.

  Args:
    encoder: a SparseMLPEncoder whose input space holds the label feature
      ids (documents' features, then any hashed n-gram buckets).
    input_keys: the batch keys fed to the encoder (the documents').
    label_ids: int ``[C, F_l]`` label feature ids, -1 padded.
    label_values: float ``[C, F_l]`` label feature values.
    num_picked: positives picked per example per step (PSL's k).
    num_hard_negatives: shortlisted labels per example per step.
    shortlist_size: labels shortlisted per example at inference.
    refresh_every: training steps between index rebuilds.
    logit_scale: cosine similarity multiplier in the losses.
    score_mix: weight of the dual-encoder cosine in the index vectors and the
      inference score (the classifier's is ``1 - score_mix``).
    index: ``'exact'`` or ``'kmeans'`` (see :class:`LabelIndex`).
    num_clusters: k-means clusters; 0: nearest power of two to sqrt(C).
    num_probe: k-means clusters searched per query.
    label_block: labels encoded at once when the index is rebuilt.
    label_to_query: add the label -> query direction to the dual-encoder
      PSL (the paper's symmetric loss).
    rngs: ``params`` for the classifier vectors.
  """

  def __init__(self, encoder: nnx.Module, input_keys: tuple[str, ...],
               label_ids: ArrayLike, label_values: ArrayLike, *,
               num_picked: int = 3, num_hard_negatives: int = 16,
               shortlist_size: int = 100, refresh_every: int = 100,
               logit_scale: float = 20.0, score_mix: float = 0.5,
               index: str = "exact", num_clusters: int = 0,
               num_probe: int = 8, label_block: int = 4096,
               label_to_query: bool = False, rngs: nnx.Rngs):
    label_ids = np.asarray(label_ids, np.int32)
    label_values = np.asarray(label_values, np.float32)
    if label_ids.ndim != 2 or label_values.shape != label_ids.shape:
      raise ValueError(f"label_ids and label_values must both be [C, F_l], "
                       f"got {label_ids.shape} and {label_values.shape}")
    num_labels = label_ids.shape[0]
    check_positive(num_picked=num_picked,
                   num_hard_negatives=num_hard_negatives,
                   refresh_every=refresh_every)
    if not 0.0 <= score_mix <= 1.0:
      raise ValueError(f"score_mix must be in [0, 1], got {score_mix}")
    self.encoder = encoder
    self.input_keys = tuple(input_keys)
    self.num_labels = num_labels
    self.num_picked = int(num_picked)
    self.num_hard_negatives = int(min(num_hard_negatives, num_labels))
    self.shortlist_size = int(min(shortlist_size, num_labels))
    self.refresh_every = int(refresh_every)
    self.logit_scale = float(logit_scale)
    self.score_mix = float(score_mix)
    self.label_block = int(label_block)
    self.label_to_query = bool(label_to_query)
    self.label_ids = LabelFeatures(jnp.asarray(label_ids))
    self.label_values = LabelFeatures(jnp.asarray(label_values))
    dim = encoder.out_features
    init = nnx.with_partitioning(nnx.initializers.normal(1.0),
                                 ("classes", "embed"), eager_sharding=False)
    self.classifier = nnx.Param(init(rngs.params(), (num_labels, dim),
                                     jnp.float32))
    self.index = LabelIndex(
        num_labels, dim, kind=index, num_clusters=num_clusters,
        num_probe=num_probe,
        min_results=max(self.shortlist_size, self.num_hard_negatives))
    self.embeddings = IndexState(jnp.zeros((num_labels, dim), jnp.float32))
    self.steps = StepCount(jnp.zeros((), jnp.int32))
    self._refresh(jnp.bool_(True))

  def _classifier(self) -> jax.Array:
    """``[C, d]`` classifier vectors, replicated (module docstring)."""
    return replicated(self.classifier[...])

  # ------------------------------------------------------------- encoders
  def query(self, batch: Mapping[str, Any], *, train: bool = False
            ) -> jax.Array:
    """Normalised document embeddings ``[B, d]``."""
    return l2_normalize(encode(self.encoder, self.input_keys, batch,
                               train=train))

  def label_embeddings(self, labels: jax.Array, *, train: bool = False
                       ) -> jax.Array:
    """Normalised embeddings ``[M, d]`` of label ids ``[M]`` (>= 0)."""
    ids = self.label_ids[...][labels]
    values = self.label_values[...][labels]
    return l2_normalize(self.encoder(ids, values, train=train)
                        .astype(jnp.float32))

  def all_label_embeddings(self) -> jax.Array:
    """``[C, d]``, encoded ``label_block`` labels at a time."""
    ids = jnp.arange(self.num_labels)
    return jax.lax.map(lambda l: self.label_embeddings(l[None])[0], ids,
                       batch_size=min(self.label_block, self.num_labels))

  def _refresh(self, pred: jax.Array) -> None:
    def make():
      e_cd = jax.lax.stop_gradient(self.all_label_embeddings())
      w_cd = l2_normalize(jax.lax.stop_gradient(self._classifier()))
      return e_cd, self.score_mix * e_cd + (1. - self.score_mix) * w_cd

    def rebuilt():
      e_cd, v_cd = make()
      return tuple(map(replicated, (e_cd,) + self.index.build(v_cd)))

    new = jax.lax.cond(pred, rebuilt,
                       lambda: (self.embeddings[...],) + self.index.arrays())
    self.embeddings[...] = new[0]
    self.index.assign(new[1:])

  # ---------------------------------------------------------------- model
  def loss(self, batch: Mapping[str, Any], *, rng: jax.Array | None = None,
           train: bool = True) -> jax.Array:
    """PSL on dual-encoder + classifier scores, mean over valid examples.

    With ``train=True`` the index is first rebuilt when the step count is a
    multiple of ``refresh_every``, and the step count advances.
    """
    if train:
      self._refresh(self.steps[...] % self.refresh_every == 0)
      self.steps[...] = self.steps[...] + 1
    rng = jax.random.key(0) if rng is None else rng
    labels_bl = batch_labels(batch)
    q_bd = self.query(batch, train=train)
    _, hard_bs = self.index.search(q_bd, self.num_hard_negatives)
    tables = (lambda m: self.label_embeddings(m, train=train),
              lambda m: l2_normalize(self._classifier()[m]))
    return in_batch_psl(q_bd, labels_bl, hard_bs, rng, self.num_picked,
                        self.num_labels, tables, self.logit_scale,
                        replicated(batch.get("mask")),
                        label_to_query=(self.label_to_query, False))

  def scores(self, q_bd: jax.Array, labels_bs: jax.Array) -> jax.Array:
    """Inference scores ``[B, S]`` of labels ``[B, S]`` (-1: -inf)."""
    safe = jnp.maximum(labels_bs, 0)
    e_bsd = self.embeddings[...][safe]
    w_bsd = l2_normalize(self._classifier()[safe])
    s = (self.score_mix * jnp.einsum("bd,bsd->bs", q_bd, e_bsd) +
         (1. - self.score_mix) * jnp.einsum("bd,bsd->bs", q_bd, w_bsd))
    return jnp.where(labels_bs >= 0, s, -jnp.inf)

  def topk(self, batch: Mapping[str, Any], k: int
           ) -> tuple[jax.Array, jax.Array]:
    """``(scores [B, k], labels [B, k])`` re-scored over the shortlist."""
    q_bd = self.query(batch)
    return self.index.shortlist_topk(q_bd, k, self.shortlist_size,
                                     lambda ids: self.scores(q_bd, ids))
