"""LightDXML: label-embedding shortlists for negative sampling, no re-ranker.

Dasgupta, Mishra, Mishra, Kumar, Jawanpuria, "LightDXML: Simple and
Lightweight Extreme Multi-Label Classification", IJCNN 2023. The model the
trainer builds for ``config.head.type='lightdxml'``, with the trainer's model
interface (``loss(batch, *, rng, train)``, ``topk(batch, k)``).

Maths (``^`` = L2-normalised, ``x = f(doc)`` the encoder's features):

1. Proxy training of label embeddings. Each label has a free proxy vector
   ``p_l``; PSL (:func:`mhe_jax.ops.losses.psl`) on ``s <x^, p^_m>`` over the
   batch's picked positives and shortlisted labels (the candidates of
   :func:`mhe_jax.nn.unidec.in_batch_psl`) pulls an example towards its
   labels' proxies and away from the others.
2. Shortlisting. The proxies ``p^`` are snapshot into a label index (exact
   or balanced k-means, :class:`mhe_jax.nn.unidec.LabelIndex`); an example's
   shortlist is the ``num_hard_negatives`` proxies nearest ``x^``.
3. Classifier training. Per-label linear classifiers ``z_l = <x, w_l> +
   b_l`` with sigmoid binary cross-entropy over the batch's positives plus
   the examples' shortlisted labels, one candidate set shared by the batch
   (an example's negatives: its shortlist and the other examples' labels and
   shortlists); labels outside it are not scored in that step. (With only
   an example's own 8 shortlisted labels as negatives, the synthetic
   learning check of tests/test_lightdxml.py reached P@1 0.59, with the
   shared set 0.73: labels rarely scored keep uncalibrated logits.)

The three stages cycle by the model's step count: ``proxy_steps`` steps of
stage 1, then the index is rebuilt (stage 2) and ``classifier_steps`` steps of
stage 3, and again. The encoder is trained in both stages. With
``proxy_steps=0`` or ``classifier_steps=0`` both losses are summed at every
step and the index is rebuilt every ``refresh_every`` steps (joint
training). Inference: the ``shortlist_size`` labels nearest ``x^`` in the
index, ranked by the classifier logits ``z_l`` (no re-ranker).

Known weakness: the k-means index (``index='kmeans'``; for LightDXML
``head.index='auto'`` therefore always picks exact search) clusters
the free proxies poorly (those of rarely seen labels stay near their random
init), so probing 8 of 128 clusters misses most true neighbours: on
configs/default.py's synthetic task (10,000 labels, 300 steps) P@1 was 0.39
with the exact index and 0.03 with k-means; at 100,000 labels (k-means, 300
steps) it stayed at 0. UniDEC, whose label embeddings come from the shared
encoder, loses 1-2 points with k-means instead. Use the exact index (or far
more probes) for LightDXML.

Example::

  model = LightDXML(encoder, ("feature_ids", "feature_values"), 983,
                    rngs=nnx.Rngs(0))
  loss = model.loss(batch, rng=jax.random.key(0))
  scores_bk, labels_bk = model.topk(batch, 5)
"""

from __future__ import annotations

from typing import Any, Mapping

from flax import nnx
import jax
import jax.numpy as jnp

from mhe_jax.nn.unidec import LabelIndex
from mhe_jax.nn.unidec import StepCount
from mhe_jax.nn.unidec import batch_labels
from mhe_jax.nn.unidec import check_positive
from mhe_jax.nn.unidec import encode
from mhe_jax.nn.unidec import in_batch_psl
from mhe_jax.nn.unidec import l2_normalize
from mhe_jax.ops import losses
from mhe_jax.ops import shortlist
from mhe_jax.sharding import replicated


class LightDXML(nnx.Module):
  """Encoder + label proxies (shortlists) + per-label classifiers.

  Args:
    encoder: any encoder (``out_features`` attribute).
    input_keys: the batch keys fed to the encoder.
    num_labels: C.
    num_picked: positives picked per example in the proxy loss.
    num_hard_negatives: shortlisted labels per example per step.
    shortlist_size: labels shortlisted per example at inference.
    proxy_steps: steps of proxy training per cycle (0: joint training).
    classifier_steps: steps of classifier training per cycle (0: joint).
    refresh_every: joint training only: steps between index rebuilds.
    logit_scale: cosine multiplier of the proxy loss.
    index: ``'exact'`` or ``'kmeans'``.
    num_clusters: k-means clusters; 0: nearest power of two to sqrt(C).
    num_probe: k-means clusters searched per query.
    rngs: ``params`` for proxies and classifier vectors.
  """

  def __init__(self, encoder: nnx.Module, input_keys: tuple[str, ...],
               num_labels: int, *, num_picked: int = 3,
               num_hard_negatives: int = 16, shortlist_size: int = 100,
               proxy_steps: int = 50, classifier_steps: int = 50,
               refresh_every: int = 100, logit_scale: float = 20.0,
               index: str = "exact", num_clusters: int = 0,
               num_probe: int = 8, rngs: nnx.Rngs):
    check_positive(num_picked=num_picked,
                   num_hard_negatives=num_hard_negatives,
                   refresh_every=refresh_every)
    if proxy_steps < 0 or classifier_steps < 0:
      raise ValueError(f"proxy_steps and classifier_steps must be >= 0, got "
                       f"{proxy_steps} and {classifier_steps}")
    self.encoder = encoder
    self.input_keys = tuple(input_keys)
    self.num_labels = int(num_labels)
    self.num_picked = int(num_picked)
    self.num_hard_negatives = int(min(num_hard_negatives, num_labels))
    self.shortlist_size = int(min(shortlist_size, num_labels))
    self.proxy_steps = int(proxy_steps)
    self.classifier_steps = int(classifier_steps)
    self.refresh_every = int(refresh_every)
    self.logit_scale = float(logit_scale)
    dim = encoder.out_features
    part = lambda init, names: nnx.with_partitioning(init, names,
                                                     eager_sharding=False)
    self.proxies = nnx.Param(part(nnx.initializers.normal(1.0),
                                  ("classes", "embed"))(
        rngs.params(), (num_labels, dim), jnp.float32))
    self.kernel = nnx.Param(part(nnx.initializers.lecun_normal(),
                                 ("classes", "embed"))(
        rngs.params(), (num_labels, dim), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((num_labels,), jnp.float32),
                          out_sharding=("classes",), eager_sharding=False)
    self.index = LabelIndex(
        num_labels, dim, kind=index, num_clusters=num_clusters,
        num_probe=num_probe,
        min_results=max(self.shortlist_size, self.num_hard_negatives))
    self.steps = StepCount(jnp.zeros((), jnp.int32))
    self.index.assign(self.index.build(self._proxy_vectors()))  # initial

  def _proxy_vectors(self) -> jax.Array:
    return l2_normalize(jax.lax.stop_gradient(replicated(self.proxies[...])))

  def _phase(self, step: jax.Array):
    """(proxy loss on, classifier loss on, rebuild the index) at ``step``."""
    if self.proxy_steps == 0 or self.classifier_steps == 0:
      return (jnp.bool_(True), jnp.bool_(True),
              step % self.refresh_every == 0)
    pos = step % (self.proxy_steps + self.classifier_steps)
    proxy = pos < self.proxy_steps
    return proxy, ~proxy, pos == self.proxy_steps

  def features(self, batch: Mapping[str, Any], *, train: bool = False
               ) -> jax.Array:
    return encode(self.encoder, self.input_keys, batch, train=train)

  def logits(self, x_bd: jax.Array, labels_bs: jax.Array) -> jax.Array:
    """Classifier logits ``[B, S]`` of labels ``[B, S]`` (>= 0)."""
    w_bsd = replicated(self.kernel[...])[labels_bs]
    b_bs = replicated(self.bias[...])[labels_bs]
    return jnp.einsum("bd,bsd->bs", x_bd, w_bsd) + b_bs

  def loss(self, batch: Mapping[str, Any], *, rng: jax.Array | None = None,
           train: bool = True) -> jax.Array:
    """The current stage's loss (both in joint training), batch mean.

    With ``train=True`` the index is rebuilt first when the stage says so
    and the step count advances.
    """
    proxy_on, classifier_on = jnp.bool_(True), jnp.bool_(True)
    if train:
      proxy_on, classifier_on, rebuild = self._phase(self.steps[...])
      self.index.refresh_if(rebuild, self._proxy_vectors)
      self.steps[...] = self.steps[...] + 1
    rng = jax.random.key(0) if rng is None else rng
    where = replicated(batch.get("mask"))
    labels_bl = batch_labels(batch)
    x_bd = self.features(batch, train=train)
    q_bd = l2_normalize(x_bd)
    _, hard_bs = self.index.search(q_bd, self.num_hard_negatives)
    proxy_loss = in_batch_psl(
        q_bd, labels_bl, hard_bs, rng, self.num_picked, self.num_labels,
        (lambda m: l2_normalize(replicated(self.proxies[...])[m]),),
        self.logit_scale, where)
    # Stage 3: BCE over the batch's positives plus every example's
    # shortlisted labels (shared by the batch, like in_batch_psl's
    # candidates): each example's negatives are its own shortlist and the
    # other examples' labels and shortlists.
    cand_m = shortlist.candidate_union(
        jnp.concatenate([labels_bl, hard_bs], axis=1),
        min(self.num_labels, labels_bl.size + hard_bs.size))
    targets_bm = shortlist.membership(cand_m, labels_bl)
    safe_m = jnp.maximum(cand_m, 0)
    w_md = replicated(self.kernel[...])[safe_m]
    z_bm = x_bd @ w_md.T + replicated(self.bias[...])[safe_m]
    bce_bm = jax.nn.softplus(z_bm) - jnp.where(targets_bm, z_bm, 0.)
    bce_b = jnp.where(cand_m >= 0, bce_bm, 0.).sum(-1)
    classifier_loss = losses.masked_mean(bce_b, where)
    return (jnp.where(proxy_on, proxy_loss, 0.) +
            jnp.where(classifier_on, classifier_loss, 0.))

  def topk(self, batch: Mapping[str, Any], k: int
           ) -> tuple[jax.Array, jax.Array]:
    """``(logits [B, k], labels [B, k])`` ranked over the proxy shortlist."""
    x_bd = self.features(batch)
    score = lambda ids: jnp.where(
        ids >= 0, self.logits(x_bd, jnp.maximum(ids, 0)), -jnp.inf)
    return self.index.shortlist_topk(l2_normalize(x_bd), k,
                                     self.shortlist_size, score)
