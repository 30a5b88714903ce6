"""A self-contained demo of the MHE ops: decode a million-class output space.

Builds a balanced codec for ``--num_classes`` labels over ``--num_heads``
heads, draws random features and head weights, and decodes the exact top-k
labels with :func:`mhe_jax.ops.product_topk` (never materialising C scores),
printing the labels and timings.

  python -m mhe_jax.demo --num_classes=1000000 --num_heads=2 --k=5
"""

import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from mhe_jax import LabelCodec
from mhe_jax import ops

_NUM_CLASSES = flags.DEFINE_integer("num_classes", 1_000_000, "Number of labels C.")
_NUM_HEADS = flags.DEFINE_integer("num_heads", 2, "Number of heads H.")
_K = flags.DEFINE_integer("k", 5, "Labels to return per example.")
_BATCH = flags.DEFINE_integer("batch", 256, "Examples per batch.")
_DIM = flags.DEFINE_integer("dim", 512, "Feature dimension.")


def main(argv):
  del argv
  codec = LabelCodec.balanced(_NUM_CLASSES.value, _NUM_HEADS.value)
  print(f"{codec}: {codec.total_outputs} head outputs instead of "
        f"{codec.num_classes} ({codec.num_classes / codec.total_outputs:.0f}x "
        "fewer classifier parameters)")
  kx, kw = jax.random.split(jax.random.key(0))
  x = jax.random.normal(kx, (_BATCH.value, _DIM.value))
  w = jax.random.normal(kw, (_DIM.value, codec.total_outputs)) / _DIM.value**0.5

  @jax.jit
  def predict(x, w):
    return ops.product_topk(codec.split(x @ w), _K.value, codec)

  t0 = time.perf_counter()
  scores, labels = jax.block_until_ready(predict(x, w))
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(10):
    t0 = time.perf_counter()
    jax.block_until_ready(predict(x, w))
    times.append(time.perf_counter() - t0)
  median = float(np.median(times))
  print(f"top-{_K.value} of {codec.num_classes} labels for {_BATCH.value} "
        f"examples: first call (with compile) {compile_s:.3f} s, then median "
        f"{median * 1e3:.2f} ms ({_BATCH.value / median:,.0f} examples/s)")
  for b in range(3):
    pairs = ", ".join(f"{int(l)}:{float(s):.3f}" for l, s in zip(labels[b], scores[b]))
    print(f"example {b}: {pairs}")
  # Cross-check the first example against the explicit scores of its labels.
  check = ops.product_log_probs(codec.split(x[:1] @ w), labels[:1], codec)
  assert jnp.allclose(check, scores[:1]), "top-k scores disagree with log-probs"
  print(f"devices: {jax.devices()}")


if __name__ == "__main__":
  app.run(main)
