"""mhe_jax: Multi-Head Encoding for extreme label classification in JAX.

Liang, Zhang, Yuan, Zhang, "Multi-Head Encoding for Extreme Label
Classification", TPAMI 2024 (arXiv 2412.10182).
"""

from mhe_jax import ops
from mhe_jax.ops.codec import LabelCodec

__version__ = "0.1.0"

__all__ = ["LabelCodec", "ops"]
