"""The classifier heads, one interface (see each class for its maths).

* :class:`VanillaHead`: the full C-way classifier, chunked and class-sharded.
* :class:`MHPHead`: Multi-Head Product, H parallel heads, exact product top-k.
* :class:`MHCHead`: Multi-Head Cascade, coarse-to-fine beam over prefixes.
* :class:`MHSHead`: Multi-Head Sampling, sampled label groups in training.

Every head: ``head(x_bd)``, ``head.loss(x_bd, labels, *, rng=None,
where=None) -> scalar``, ``head.topk(x_bd, k) -> (scores [B, k], labels
[B, k])``, labels int ``[B]`` or ``[B, L]`` (-1 padded).
"""

from mhe_jax.nn.mhc import MHCHead
from mhe_jax.nn.mhp import MHPHead
from mhe_jax.nn.mhp import MHSHead
from mhe_jax.nn.vanilla import VanillaHead

__all__ = ["MHCHead", "MHPHead", "MHSHead", "VanillaHead"]
