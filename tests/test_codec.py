"""LabelCodec: round trips against a plain-Python mixed-radix reference."""

import dataclasses
import itertools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mhe_jax import LabelCodec
from mhe_jax.ops import codec as codec_lib

RADIX_SETS = [(7,), (2, 2), (3, 4), (4, 3, 5), (2, 3, 2, 4), (5, 1 + 1, 6)]


def python_digits(y, radices):
  """Most significant first, by repeated division (independent of strides)."""
  out = []
  for r in reversed(radices):
    out.append(y % r)
    y //= r
  return list(reversed(out))


@pytest.mark.parametrize("radices", RADIX_SETS)
@pytest.mark.parametrize("slack", [0, 1, 5])
def test_exhaustive_round_trip(radices, slack):
  capacity = math.prod(radices)
  num_classes = max(2, capacity - slack)
  codec = LabelCodec(radices, num_classes)
  labels = np.arange(num_classes)
  digits = np.asarray(codec.encode(labels))
  expected = np.array([python_digits(int(y), radices) for y in labels])
  np.testing.assert_array_equal(digits, expected)
  assert digits.dtype == np.int32
  np.testing.assert_array_equal(codec.decode(digits), labels)
  # Every in-range digit tuple whose code is < C is hit exactly once.
  assert len({tuple(d) for d in digits}) == num_classes


def test_attributes():
  codec = LabelCodec((4, 3, 5), 50)
  assert codec.num_heads == 3
  assert codec.capacity == 60
  assert codec.strides == (15, 5, 1)
  assert codec.offsets == (0, 4, 7)
  assert codec.total_outputs == 12
  assert hash(codec) == hash(LabelCodec([4, 3, 5], 50))
  assert codec == LabelCodec([4, 3, 5], 50)
  with pytest.raises(dataclasses.FrozenInstanceError):
    codec.num_classes = 3  # immutable


def test_padding_and_shapes():
  codec = LabelCodec((3, 4), 10)
  labels = np.array([[0, 9, -1], [-1, -1, 5]])
  digits = codec.encode(labels)
  chex.assert_shape(digits, (2, 3, 2))
  np.testing.assert_array_equal(digits[0, 2], [-1, -1])
  np.testing.assert_array_equal(digits[0, 1], [2, 1])
  np.testing.assert_array_equal(codec.decode(digits), labels)


def test_balanced_matches_brute_force():
  for num_classes in range(2, 40):
    for num_heads in (1, 2, 3):
      best = None
      # H equal radices ceil(C^(1/H)) cover C, so an optimal tuple's sum is at
      # most H * ceil(C^(1/H)) and none of its radices exceeds that minus
      # 2 (H - 1): searching below that bound is exhaustive.
      root = math.ceil(round(num_classes ** (1 / num_heads), 9))
      top = num_heads * root - 2 * (num_heads - 1)
      for rs in itertools.product(range(2, top + 1), repeat=num_heads):
        cap = math.prod(rs)
        if cap >= num_classes:
          key = (sum(rs), cap, tuple(-r for r in rs))
          best = min(best, (key, rs)) if best else (key, rs)
      codec = LabelCodec.balanced(num_classes, num_heads)
      assert codec.radices == best[1], (num_classes, num_heads)


@pytest.mark.parametrize("num_classes,num_heads,expected", [
    (10, 2, (5, 2)),
    (1_000_000, 2, (1000, 1000)),
    (1_000_000, 3, (100, 100, 100)),
    (10**8, 4, (100, 100, 100, 100)),
])
def test_balanced_known(num_classes, num_heads, expected):
  assert LabelCodec.balanced(num_classes, num_heads).radices == expected


def test_balanced_large_is_near_optimal():
  codec = LabelCodec.balanced(10**8, 3)
  assert codec.capacity >= 10**8
  # Real-valued optimum is 3 * 1e8^(1/3) = 1392.4; integers cannot beat it.
  assert sum(codec.radices) == math.ceil(3 * 10 ** (8 / 3))


@pytest.mark.parametrize("radices,num_classes,match", [
    ((3, 4), 13, r"product of radices \(3, 4\) is 12, below num_classes=13"),
    ((1, 4), 4, r"every radix must be >= 2, got 1"),
    ((), 4, r"num_heads must be >= 1"),
    ((3, 4), 1, r"num_classes must be >= 2, got 1"),
    ((2**16, 2**16), 5, r"above the int32 limit"),
])
def test_construction_errors(radices, num_classes, match):
  with pytest.raises(ValueError, match=match):
    LabelCodec(radices, num_classes)


def test_balanced_errors():
  with pytest.raises(ValueError, match="num_heads must be an integer >= 1"):
    LabelCodec.balanced(100, 0)
  with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
    LabelCodec.balanced(1, 2)


@pytest.mark.parametrize("bad", [10, 11, -2])
def test_out_of_range_labels_raise_eagerly(bad):
  codec = LabelCodec((3, 4), 10)
  with pytest.raises(ValueError, match=rf"\[-1, 10\).*got {bad} at index \(1,\)"):
    codec.encode(np.array([3, bad, 4]))
  with pytest.raises(ValueError, match=rf"got {bad}"):
    codec.encode(jnp.array([3, bad]))


def test_out_of_range_labels_under_jit_become_padding():
  # Codes 10 and 11 exist in the capacity (12) but are not labels: they must
  # not be encoded to their digits, nor wrap around to another label.
  codec = LabelCodec((3, 4), 10)
  labels = jnp.array([3, 10, 11, 12, -2, 2**30, 9])
  digits = jax.jit(codec.encode)(labels)
  np.testing.assert_array_equal(
      digits, [[0, 3], [-1, -1], [-1, -1], [-1, -1], [-1, -1], [-1, -1], [2, 1]])
  np.testing.assert_array_equal(jax.vmap(codec.encode)(labels), digits)


def test_decode_invalid_digits():
  codec = LabelCodec((3, 4), 10)
  bad = np.array([[0, 1], [2, 2], [0, 4], [-1, 0]])  # code 10 >= C, 4 >= r
  with pytest.raises(ValueError, match=r"\[2, 2\] at index \(1,\)"):
    codec.decode(bad)
  np.testing.assert_array_equal(jax.jit(codec.decode)(bad), [1, -1, -1, -1])
  with pytest.raises(ValueError, match="last dimension num_heads=2"):
    codec.decode(np.zeros((3, 3), np.int32))


def test_non_integer_labels_rejected():
  codec = LabelCodec((3, 4), 10)
  with pytest.raises(TypeError, match="integers"):
    codec.encode(np.array([1.0, 2.0]))


def test_split():
  codec = LabelCodec((4, 3, 5), 50)
  fused = jnp.arange(2 * 12).reshape(2, 12)
  parts = codec.split(fused)
  assert [p.shape for p in parts] == [(2, 4), (2, 3), (2, 5)]
  np.testing.assert_array_equal(jnp.concatenate(parts, -1), fused)
  with pytest.raises(ValueError, match="sum\\(radices\\)=12"):
    codec.split(jnp.zeros((2, 11)))


def test_codec_is_static_jit_argument_without_retracing():
  @jax.jit
  @chex.assert_max_traces(n=1)
  def f(labels):
    return LabelCodec((3, 4), 10).encode(labels)

  chex.clear_trace_counter()
  f(jnp.array([1, 2]))
  f(jnp.array([3, 4]))  # equal codec, same shapes: no retrace
  g = jax.jit(lambda x, c: c.decode(c.encode(x)), static_argnums=1)
  np.testing.assert_array_equal(g(jnp.arange(10), LabelCodec((3, 4), 10)),
                                np.arange(10))
  assert codec_lib.MAX_CAPACITY == 2**31 - 1


# ------------------------------------------------------------ permutations
@pytest.mark.parametrize("radices", [(7,), (3, 4), (4, 3, 5), (2, 3, 2, 4)])
@pytest.mark.parametrize("slack", [0, 3])
def test_permuted_exhaustive_round_trip(radices, slack):
  num_classes = max(2, math.prod(radices) - slack)
  perm = np.random.default_rng(sum(radices) + slack).permutation(num_classes)
  codec = LabelCodec(radices, num_classes, perm)
  labels = np.arange(num_classes)
  digits = np.asarray(codec.encode(labels))
  # Label y is written as the plain digits of its code perm[y].
  expected = np.array([python_digits(int(perm[y]), radices) for y in labels])
  np.testing.assert_array_equal(digits, expected)
  np.testing.assert_array_equal(codec.decode(digits), labels)
  np.testing.assert_array_equal(jax.jit(codec.decode)(digits), labels)
  np.testing.assert_array_equal(codec.to_codes(labels), perm)
  np.testing.assert_array_equal(codec.to_labels(perm), labels)
  # Padding and invalid codes never become labels.
  np.testing.assert_array_equal(codec.encode(np.array([-1])), [[-1] * len(radices)])
  invalid = np.arange(num_classes, math.prod(radices))
  if invalid.size:
    invalid_digits = np.array([python_digits(int(c), radices) for c in invalid])
    np.testing.assert_array_equal(jax.jit(codec.decode)(invalid_digits), -1)
    with pytest.raises(ValueError, match="not a valid code"):
      codec.decode(invalid_digits)
  np.testing.assert_array_equal(
      codec.to_labels(np.array([-1, num_classes, -5])), [-1, -1, -1])
  np.testing.assert_array_equal(
      jax.jit(codec.encode)(jnp.array([num_classes, -3])), -1)


def test_permuted_codec_hash_eq_and_identity():
  perm = np.random.default_rng(0).permutation(10)
  a = LabelCodec((3, 4), 10, perm)
  b = LabelCodec.balanced(10, 2).with_permutation(list(perm))  # (5, 2)
  assert a != b  # different radices
  c = LabelCodec((3, 4), 10, perm.astype(np.int64))
  assert a == c and hash(a) == hash(c)
  assert a != LabelCodec((3, 4), 10) and a.permuted
  assert a != LabelCodec((3, 4), 10, np.roll(perm, 1))
  # The identity is stored as no permutation at all.
  ident = LabelCodec((3, 4), 10, np.arange(10))
  assert ident == LabelCodec((3, 4), 10) and not ident.permuted
  assert ident.permutation is None
  assert "permutation=<" in repr(a) and "permutation" not in repr(ident)
  with pytest.raises(ValueError, match="read-only"):
    a.permutation[0] = 3
  np.testing.assert_array_equal(a.inverse_permutation[perm], np.arange(10))
  perm[0], perm[1] = perm[1], perm[0]  # the codec holds its own copy
  assert a == c


@pytest.mark.parametrize("perm,match", [
    (np.arange(9), r"permutation has length 9, expected num_classes=10"),
    (np.r_[np.arange(9), 10], r"maps label 9 to code 10, outside \[0, num_classes=10\)"),
    (np.r_[np.arange(9), -1], r"maps label 9 to code -1"),
    (np.r_[0, 0, np.arange(2, 10)], r"not a bijection: labels 0 and 1 both map to code 0"),
    (np.arange(10.0), r"1-D integer array"),
    (np.arange(10).reshape(2, 5), r"1-D integer array"),
])
def test_permutation_construction_errors(perm, match):
  with pytest.raises(ValueError, match=match):
    LabelCodec((3, 4), 10, perm)


def test_permuted_codec_jit_static_no_retrace():
  perm = np.random.default_rng(1).permutation(10)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def f(labels):
    return LabelCodec((3, 4), 10, perm).encode(labels)

  chex.clear_trace_counter()
  f(jnp.array([1, 2]))
  f(jnp.array([3, 4]))  # an equal permuted codec: no retrace
  g = jax.jit(lambda x, c: c.decode(c.encode(x)), static_argnums=1)
  np.testing.assert_array_equal(g(jnp.arange(10), LabelCodec((3, 4), 10, perm)),
                                np.arange(10))



@pytest.mark.parametrize("radices, num_classes, match", [
    # Found by tests/test_fuzz.py: these raised int()'s own ValueError,
    # OverflowError or TypeError, naming no argument.
    ((float("nan"),), 2, r"radices must be integers, got \(nan,\)"),
    ((math.inf, 2), 2, r"radices must be integers"),
    (("a",), 2, r"radices must be integers"),
    ("ab", 2, r"radices must be a sequence of ints"),
    ((4,), float("nan"), r"num_classes must be an integer, got nan"),
    ((4,), None, r"num_classes must be an integer, got None"),
    ((4,), [], r"num_classes must be an integer, got \[\]"),
])
def test_non_numeric_arguments_name_the_argument(radices, num_classes, match):
  with pytest.raises((ValueError, TypeError), match=match):
    LabelCodec(radices, num_classes)


def test_balanced_argument_errors_name_the_argument():
  with pytest.raises(ValueError, match="num_heads must be an integer, got nan"):
    LabelCodec.balanced(10, float("nan"))
  with pytest.raises(ValueError, match="num_classes must be an integer"):
    LabelCodec.balanced(math.inf, 2)
  # Was a RecursionError from the radix search.
  with pytest.raises(ValueError, match=r"num_heads=1000: .* above the int32"):
    LabelCodec.balanced(3, 1000)
  assert LabelCodec.balanced(3, 30).capacity == 2**30
