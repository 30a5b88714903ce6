"""Pure JAX ops of Multi-Head Encoding (no Flax): codec, scoring, top-k."""

from mhe_jax.ops.codec import LabelCodec
from mhe_jax.ops.topk import multilabel_digit_targets
from mhe_jax.ops.topk import product_log_probs
from mhe_jax.ops.topk import product_topk

__all__ = [
    "LabelCodec",
    "multilabel_digit_targets",
    "product_log_probs",
    "product_topk",
]
