"""The label codec of Multi-Head Encoding: labels <-> per-head local labels.

A label ``y < C`` is written in the mixed radix ``r = (r_1, ..., r_H)`` with the
most significant head first (Liang et al., TPAMI 2024, Sec. 3.1)::

  d_h = (y // s_h) % r_h,   s_h = r_{h+1} * ... * r_H,   y = sum_h d_h * s_h.

The product of the radices (the *capacity*) may exceed ``C``; codes ``>= C``
are never produced by :meth:`LabelCodec.encode` and are never predicted by
:func:`mhe_jax.ops.product_topk`.

Label order. By default the code of label ``y`` is ``y`` itself (the given
label order). A codec may instead carry a ``permutation``, a bijection
``label -> code`` of ``{0 .. C-1}`` onto itself: :meth:`LabelCodec.encode`
applies it before the digit split and :meth:`LabelCodec.decode` applies its
inverse after, so which labels share a first digit (a group) is up to the
caller, e.g. similar labels from balanced clustering of label centroids
(:mod:`mhe_jax.ops.label_order`). The set of valid codes stays ``0 .. C-1``,
so every op keeps excluding the codes ``>= C`` exactly as before; functions
that work on codes (the MHC beam, the MHS column layout) convert at their
boundary with :meth:`LabelCodec.to_codes` / :meth:`LabelCodec.to_labels`.

Example::

  codec = LabelCodec.balanced(1_000_000, num_heads=2)   # radices (1000, 1000)
  digits = codec.encode(jnp.array([0, 999_999, -1]))    # [[0, 0], [999, 999], [-1, -1]]
  labels = codec.decode(digits)                          # [0, 999_999, -1]
  shuffled = codec.with_permutation(np.random.default_rng(0).permutation(10**6))
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

ArrayLike = jax.typing.ArrayLike

# Labels, digits and codes are int32 on device.
MAX_CAPACITY = 2**31 - 1


def _is_traced(x) -> bool:
  return isinstance(x, jax.core.Tracer)


def as_integer(value, name: str) -> int:
  """``value`` as an int when it is an integral number (``3``, ``3.0``,
  ``np.int64(3)``), else a ValueError naming the argument ``name``."""
  try:
    as_int = int(value)
  except (TypeError, ValueError, OverflowError):
    as_int = None
  if as_int is None or isinstance(value, (str, bytes)) or as_int != value:
    raise ValueError(f"{name} must be an integer, got {value!r}")
  return as_int


@dataclasses.dataclass(frozen=True)
class LabelCodec:
  """Mixed-radix code of ``num_classes`` labels over ``len(radices)`` heads.

  Immutable and hashable, so it can be a static argument of ``jax.jit``.
  A permuted codec is hashed and compared by a digest of its permutation
  (computed once, at construction), never by its C entries.

  Attributes:
    radices: per-head output sizes ``(r_1, ..., r_H)``, most significant first.
    num_classes: ``C``, the number of valid labels ``0 .. C-1``.
    permutation: None (code = label), or a read-only int32 ``[C]`` array,
      ``permutation[y]`` the code of label ``y``: a bijection of ``0 .. C-1``
      onto itself. The identity is stored as None. Under ``jit`` it (and its
      inverse) become constants of the compiled program, 4 bytes per label
      each (about twice that as program text: 800 MB and 6 s of compile
      at 10^8 labels). Run with ``JAX_USE_SIMPLIFIED_JAXPR_CONSTANTS=1``
      (read when JAX starts) and JAX passes them to the executable as
      arguments instead (benchmarks/codec_constants.py).
    permutation_digest: hex digest of the permutation ("" when None); with
      the radices and C it is what equality and hashing look at.
  """

  radices: tuple[int, ...]
  num_classes: int
  permutation: np.ndarray | None = dataclasses.field(
      default=None, compare=False, repr=False)
  permutation_digest: str = dataclasses.field(
      default="", init=False, repr=False)

  def __post_init__(self):
    if isinstance(self.radices, (str, bytes)):
      raise TypeError(
          f"radices must be a sequence of ints, got {self.radices!r}")
    try:
      items = tuple(self.radices)
    except TypeError as e:
      raise TypeError(
          f"radices must be a sequence of ints, got {self.radices!r}") from e
    try:
      radices = tuple(as_integer(r, "radices") for r in items)
    except ValueError:
      raise ValueError(
          f"radices must be integers, got {self.radices!r}") from None
    object.__setattr__(self, "radices", radices)
    object.__setattr__(self, "num_classes",
                       as_integer(self.num_classes, "num_classes"))
    if len(radices) < 1:
      raise ValueError("num_heads must be >= 1, got radices=() (0 heads)")
    if self.num_classes < 2:
      raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
    bad = [r for r in radices if r < 2]
    if bad:
      raise ValueError(
          f"every radix must be >= 2, got {bad[0]} in radices {radices}")
    capacity = math.prod(radices)
    if capacity < self.num_classes:
      raise ValueError(
          f"the product of radices {radices} is {capacity}, below "
          f"num_classes={self.num_classes}; it must be >= num_classes")
    if capacity > MAX_CAPACITY:
      raise ValueError(
          f"the product of radices {radices} is {capacity}, above the int32 "
          f"limit {MAX_CAPACITY}; use fewer or smaller heads")
    perm, inverse = _check_permutation(self.permutation, self.num_classes)
    object.__setattr__(self, "permutation", perm)
    object.__setattr__(self, "_inverse", inverse)
    object.__setattr__(
        self, "permutation_digest", "" if perm is None else
        hashlib.blake2b(perm.astype("<i4").tobytes(), digest_size=16).hexdigest())

  # ------------------------------------------------------------------ props
  @classmethod
  def balanced(cls, num_classes: int, num_heads: int,
               permutation: ArrayLike | None = None) -> "LabelCodec":
    """The codec with the smallest ``sum(radices)`` whose product covers C.

    Among radix tuples with ``prod(r) >= num_classes`` and every ``r_h >= 2``,
    picks the one with the smallest sum of radices (the number of output units
    of all heads together); ties go to the smallest capacity ``prod(r)``, then
    to the lexicographically largest tuple. Radices are returned in
    non-increasing order, e.g. ``balanced(10, 2)`` is ``(5, 2)`` (sum 7,
    capacity 10) rather than ``(4, 3)`` (sum 7, capacity 12).

    Args:
      num_classes: C >= 2.
      num_heads: H >= 1.
      permutation: optional label -> code bijection, see the class docstring.
    """
    num_heads = as_integer(num_heads, "num_heads")
    num_classes = as_integer(num_classes, "num_classes")
    if num_heads < 1:
      raise ValueError(f"num_heads must be an integer >= 1, got {num_heads!r}")
    if num_classes < 2:
      raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if 2**num_heads > MAX_CAPACITY:
      raise ValueError(
          f"num_heads={num_heads}: every radix is >= 2, so the capacity "
          f"2**{num_heads} is above the int32 limit {MAX_CAPACITY}")
    return cls(_balanced_radices(num_classes, num_heads), num_classes,
               permutation)

  def with_permutation(self, permutation: ArrayLike | None) -> "LabelCodec":
    """The same radices and C with another label -> code permutation."""
    return LabelCodec(self.radices, self.num_classes, permutation)

  @property
  def permuted(self) -> bool:
    """Whether codes differ from labels (a non-identity permutation)."""
    return self.permutation is not None

  @property
  def inverse_permutation(self) -> np.ndarray | None:
    """Read-only int32 ``[C]``, code -> label; None when not permuted."""
    return self._inverse

  @property
  def num_heads(self) -> int:
    return len(self.radices)

  @property
  def capacity(self) -> int:
    return math.prod(self.radices)

  @property
  def strides(self) -> tuple[int, ...]:
    """``s_h = r_{h+1} * ... * r_H`` (so ``s_H = 1``)."""
    out, s = [], 1
    for r in reversed(self.radices):
      out.append(s)
      s *= r
    return tuple(reversed(out))

  @property
  def offsets(self) -> tuple[int, ...]:
    """Start of each head's block in a fused ``[..., sum(radices)]`` output."""
    return tuple(int(o) for o in np.cumsum((0,) + self.radices[:-1]))

  @property
  def total_outputs(self) -> int:
    """``sum(radices)``: the width of all heads' logits together."""
    return sum(self.radices)

  def __repr__(self) -> str:
    perm = (f", permutation=<{self.permutation_digest[:12]}>"
            if self.permuted else "")
    return (f"LabelCodec(radices={self.radices}, "
            f"num_classes={self.num_classes}{perm})")

  # ---------------------------------------------------------------- methods
  def split(self, fused: ArrayLike) -> list[jax.Array]:
    """Splits fused logits ``[..., sum(radices)]`` into H arrays ``[..., r_h]``."""
    fused = jnp.asarray(fused)
    if fused.shape[-1] != self.total_outputs:
      raise ValueError(
          f"fused logits have last dimension {fused.shape[-1]}, expected "
          f"sum(radices)={self.total_outputs} for {self}")
    return [fused[..., o:o + r] for o, r in zip(self.offsets, self.radices)]

  def validate_labels(self, labels: ArrayLike, *, name: str = "labels") -> None:
    """Raises ValueError if a concrete label lies outside ``[-1, num_classes)``.

    A no-op for traced values (under ``jit``/``vmap``), where out-of-range
    labels are handled as documented in :meth:`encode`.
    """
    if _is_traced(labels):
      return
    arr = np.asarray(labels)
    if not np.issubdtype(arr.dtype, np.integer):
      raise TypeError(f"{name} must be integers, got dtype {arr.dtype}")
    bad = (arr < -1) | (arr >= self.num_classes)
    if bad.any():
      pos = tuple(int(i) for i in np.argwhere(bad)[0])
      raise ValueError(
          f"{name} must lie in [-1, {self.num_classes}) (-1 = padding); got "
          f"{arr[pos]} at index {pos}")

  def encode(self, labels: ArrayLike) -> jax.Array:
    """Labels ``[...]`` -> int32 digits ``[..., H]``, most significant first.

    The padding label -1 encodes to all -1 digits. Out-of-range labels
    (``< -1`` or ``>= num_classes``) raise a ValueError naming the first bad
    value when ``labels`` is concrete. Under ``jit``/``vmap`` they cannot be
    inspected, and encode to all -1 digits: they are treated exactly like
    padding (masked out of losses and scores), never wrapped around into
    another valid label. With a permutation, label ``y`` is written as the
    digits of its code ``permutation[y]``.
    """
    self.validate_labels(labels)
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
      raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
    return _encode(labels, self)

  def decode(self, digits: ArrayLike) -> jax.Array:
    """Digits ``[..., H]`` -> int32 labels ``[...]``, the inverse of encode.

    Rows of all -1 decode to -1. A row with a digit outside ``[0, r_h)`` or
    whose code is ``>= num_classes`` raises a ValueError when concrete, and
    decodes to -1 under ``jit``/``vmap``. With a permutation, a valid code
    decodes to its label (the inverse permutation).
    """
    digits_arr = digits if _is_traced(digits) else np.asarray(digits)
    if digits_arr.shape[-1:] != (self.num_heads,):
      raise ValueError(
          f"digits must have last dimension num_heads={self.num_heads}, got "
          f"shape {digits_arr.shape}")
    if not _is_traced(digits):
      if not np.issubdtype(digits_arr.dtype, np.integer):
        raise TypeError(f"digits must be integers, got dtype {digits_arr.dtype}")
      radices = np.asarray(self.radices)
      pad = (digits_arr == -1).all(-1)
      in_range = ((digits_arr >= 0) & (digits_arr < radices)).all(-1)
      code = (digits_arr.astype(np.int64) * np.asarray(self.strides)).sum(-1)
      bad = ~pad & ~(in_range & (code < self.num_classes))
      if bad.any():
        pos = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"digits {digits_arr[pos].tolist()} at index {pos} are not a valid "
            f"code of {self}")
    return _decode(jnp.asarray(digits), self)

  def to_codes(self, labels: ArrayLike) -> jax.Array:
    """Labels -> codes (int32, same shape), for ops that work on codes.

    Without a permutation the labels are returned unchanged (as int32).
    With one, label ``y`` in ``[0, C)`` maps to ``permutation[y]`` and
    everything else (padding -1, out-of-range values) to -1. Traceable; no
    validation (see :meth:`validate_labels`).
    """
    labels = jnp.asarray(labels).astype(jnp.int32)
    if not self.permuted:
      return labels
    return _lookup(labels, self.permutation, self.num_classes)

  def to_labels(self, codes: ArrayLike) -> jax.Array:
    """Codes -> labels, the inverse of :meth:`to_codes`.

    Without a permutation the codes are returned unchanged (as int32). With
    one, a code in ``[0, C)`` maps to its label and anything else to -1, so
    an invalid code never becomes a valid label.
    """
    codes = jnp.asarray(codes).astype(jnp.int32)
    if not self.permuted:
      return codes
    return _lookup(codes, self._inverse, self.num_classes)


def _check_permutation(permutation, num_classes: int):
  """(permutation, inverse) as read-only int32 arrays; (None, None) if identity."""
  if permutation is None:
    return None, None
  if _is_traced(permutation):
    raise TypeError("permutation must be concrete (a numpy array or list), "
                    "not a traced value")
  perm = np.asarray(permutation)
  if perm.ndim != 1 or not (np.issubdtype(perm.dtype, np.integer) or
                            perm.size == 0):
    raise ValueError(
        f"permutation must be a 1-D integer array (label -> code), got "
        f"shape {perm.shape} and dtype {perm.dtype}")
  if perm.shape[0] != num_classes:
    raise ValueError(
        f"permutation has length {perm.shape[0]}, expected "
        f"num_classes={num_classes} (one code per label)")
  bad = np.flatnonzero((perm < 0) | (perm >= num_classes))
  if bad.size:
    raise ValueError(
        f"permutation maps label {bad[0]} to code {perm[bad[0]]}, outside "
        f"[0, num_classes={num_classes})")
  perm = perm.astype(np.int32)
  inverse = np.full(num_classes, -1, np.int32)
  inverse[perm] = np.arange(num_classes, dtype=np.int32)
  if (inverse < 0).any():
    code_counts = np.bincount(perm, minlength=num_classes)
    dup = int(np.flatnonzero(code_counts > 1)[0])
    first, second = np.flatnonzero(perm == dup)[:2]
    raise ValueError(
        f"permutation is not a bijection: labels {first} and {second} both "
        f"map to code {dup}")
  if (perm == np.arange(num_classes)).all():
    return None, None
  perm.flags.writeable = False
  inverse.flags.writeable = False
  return perm, inverse


def _lookup(x: jax.Array, table: np.ndarray, n: int) -> jax.Array:
  """``table[x]`` where ``0 <= x < n``, else -1 (int32)."""
  valid = (x >= 0) & (x < n)
  # The rows keep the indices' sharding (said explicitly: a gather from a
  # constant table cannot always infer it on an Explicit mesh).
  out = jnp.asarray(table).at[jnp.where(valid, x, 0)].get(
      out_sharding=jax.typeof(x).sharding)
  return jnp.where(valid, out, -1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnums=1)
def _encode(labels: jax.Array, codec: LabelCodec) -> jax.Array:
  labels = labels.astype(jnp.int32)
  valid = (labels >= 0) & (labels < codec.num_classes)
  safe = jnp.where(valid, labels, 0)
  if codec.permuted:
    safe = jnp.asarray(codec.permutation)[safe]
  digits = [(safe // s) % r for s, r in zip(codec.strides, codec.radices)]
  digits = jnp.stack(digits, axis=-1)
  return jnp.where(valid[..., None], digits, -1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnums=1)
def _decode(digits: jax.Array, codec: LabelCodec) -> jax.Array:
  digits = digits.astype(jnp.int32)
  radices = jnp.asarray(codec.radices, jnp.int32)
  in_range = ((digits >= 0) & (digits < radices)).all(-1)
  safe = jnp.where(in_range[..., None], digits, 0)
  code = (safe * jnp.asarray(codec.strides, jnp.int32)).sum(-1)
  valid = in_range & (code < codec.num_classes)
  if codec.permuted:
    code = jnp.asarray(codec.inverse_permutation)[jnp.where(valid, code, 0)]
  return jnp.where(valid, code, -1).astype(jnp.int32)


@functools.lru_cache(maxsize=256)
def _balanced_radices(num_classes: int, num_heads: int) -> tuple[int, ...]:
  """Smallest sum, then smallest product, then largest tuple; see balanced()."""
  if num_heads == 1:
    return (num_classes,)

  # The smallest sum is reached by radices differing by at most one (moving a
  # unit from a larger to a smaller radix keeps the sum and raises the
  # product), so search the near-equal tuples for it first.
  def max_product(total: int, heads: int) -> int:
    # Largest product of `heads` integers >= 2 summing to `total`.
    q, rem = divmod(total, heads)
    return (q + 1) ** rem * q ** (heads - rem)

  lo = max(2 * num_heads, 1)
  base = max(2, int(math.floor(num_classes ** (1.0 / num_heads))) - 1)
  total = max(lo, base * num_heads)
  while total > lo and max_product(total - 1, num_heads) >= num_classes:
    total -= 1
  while max_product(total, num_heads) < num_classes:
    total += 1

  # Among all non-increasing tuples with that sum and product >= C, the
  # smallest product wins (ties: lexicographically largest tuple).
  best: list = [None, None]  # [capacity, radices]

  def search(prefix: tuple[int, ...], prod: int, remaining: int, heads: int):
    if heads == 1:
      r = remaining
      if prefix and r > prefix[-1]:
        return
      cap = prod * r
      if cap >= num_classes and (best[0] is None or cap < best[0] or
                                 (cap == best[0] and prefix + (r,) > best[1])):
        best[0], best[1] = cap, prefix + (r,)
      return
    hi = min(prefix[-1] if prefix else remaining, remaining - 2 * (heads - 1))
    mean = -(-remaining // heads)  # a non-increasing tuple starts >= its mean
    for r in range(hi, mean - 1, -1):
      if prod * r * max_product(remaining - r, heads - 1) >= num_classes:
        search(prefix + (r,), prod * r, remaining - r, heads - 1)

  search((), 1, total, num_heads)
  assert best[1] is not None, (num_classes, num_heads, total)
  return best[1]
