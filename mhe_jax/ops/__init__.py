"""Pure JAX ops of Multi-Head Encoding (no Flax): codec, scoring, top-k.

Submodules: ``codec`` (LabelCodec), ``topk`` (product-space scoring and exact
top-k), ``losses`` (per-example losses, optax-style), ``chunked`` (class-
chunked, class-shardable full-classifier CE/BCE/top-k), ``sampling`` (MHS
group sampling), ``cascade`` (MHC beam search).
"""

from mhe_jax.ops import losses
from mhe_jax.ops.codec import LabelCodec
from mhe_jax.ops.topk import multilabel_digit_targets
from mhe_jax.ops.topk import product_log_probs
from mhe_jax.ops.topk import product_topk

__all__ = [
    "LabelCodec",
    "losses",
    "multilabel_digit_targets",
    "product_log_probs",
    "product_topk",
]
