"""mhe_jax: Multi-Head Encoding for extreme label classification in JAX.

Liang, Zhang, Yuan, Zhang, "Multi-Head Encoding for Extreme Label
Classification", TPAMI 2024 (arXiv 2412.10182).
"""

from mhe_jax import ops
from mhe_jax.ops.codec import LabelCodec

__version__ = "0.1.0"


def load(path, **kwargs):
  """A trained model's predictor: see :func:`mhe_jax.inference.load`.

  ``mhe_jax.load(workdir).predict(features, k)`` -> ``(scores, labels)``.
  Needs the ``train`` extra (``pip install "mhe_jax[train]"``); imported on
  first use, so ``import mhe_jax`` needs only the core.
  """
  from mhe_jax import inference  # pylint: disable=g-import-not-at-top
  return inference.load(path, **kwargs)


__all__ = ["LabelCodec", "load", "ops"]
