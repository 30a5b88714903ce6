"""The classifier heads, one contract (see each class for its maths).

* :class:`VanillaHead`: the full C-way classifier, chunked and class-sharded.
* :class:`MHPHead`: Multi-Head Product, H parallel heads, exact product top-k.
* :class:`MHCHead`: Multi-Head Cascade, coarse-to-fine beam over prefixes.
* :class:`MHSHead`: Multi-Head Sampling, sampled label groups in training.

The contract, shared by every head (labels int ``[B]``, -1 = no label, or
``[B, L]`` label sets, -1 padded):

* Constructor keywords, as flax's layers: ``dtype`` (the matmuls' input
  dtype; None: the features' and parameters'), ``param_dtype`` (float32 by
  default), ``kernel_init`` and ``bias_init``, and ``rngs``. Under
  ``dtype=jnp.bfloat16`` the matmuls run in bfloat16 and everything after
  them (logits, log-sum-exps, log-softmaxes, losses, scores) is float32.
* ``head(x_bd)``: the head's raw outputs, float32 logits, never
  probabilities: ``[B, C]`` for the full classifiers (vanilla, MHS), the H
  per-head logits ``[B, r_h]`` for MHP, the level-1 logits ``[B, r_1]`` for
  MHC.
* ``head.per_example_loss(x_bd, labels, *, rng=None)``: float32 ``[B]``, 0
  for an example without a label.
* ``head.loss(x_bd, labels, *, rng=None, where=None)``: float32 scalar,
  ``ops.losses.masked_mean(per_example_loss(x_bd, labels, rng=rng), where &
  labelled)``; ``labelled`` is a label in ``[0, C)`` single-label, every
  row multi-label (MHC: every row with a label). With an ``rng`` MHS draws
  one group sample for the batch, the same in both calls.
* ``head.topk(x_bd, k)``: ``(scores [B, k] float32, labels [B, k] int32)``,
  scores descending, exact for the head's scoring rule. The scores are
  log-probabilities under the head's model for MHP, MHC and MHS (the
  product of the heads', the chain of the levels', the full softmax or
  sigmoid) and the logits for vanilla; the order is the head's either way.
"""

from mhe_jax.nn.mhc import MHCHead
from mhe_jax.nn.mhp import MHPHead
from mhe_jax.nn.mhs import MHSHead
from mhe_jax.nn.vanilla import VanillaHead

__all__ = ["MHCHead", "MHPHead", "MHSHead", "VanillaHead"]
