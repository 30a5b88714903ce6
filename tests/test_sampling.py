"""ops.sampling.sample_groups: contents, determinism, uniformity, sharding."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from mhe_jax.ops.sampling import sample_groups


@pytest.mark.parametrize("shape,num_groups,num_sampled", [
    ((6,), 20, 6), ((6,), 20, 11), ((6,), 4, 4), ((3, 4), 30, 12),
    ((3, 4), 7, 7), ((1,), 1, 1),
])
def test_contains_true_groups_distinct_and_slots(shape, num_groups,
                                                 num_sampled):
  rng = np.random.default_rng(num_groups + num_sampled)
  for trial in range(5):
    true = rng.integers(-1, num_groups, shape)
    ids, slots = sample_groups(true, num_groups, num_sampled,
                               jax.random.key(trial))
    ids, slots = np.asarray(ids), np.asarray(slots)
    assert ids.shape == (num_sampled,) and ids.dtype == np.int32
    assert slots.shape == shape and slots.dtype == np.int32
    assert len(set(ids.tolist())) == num_sampled
    assert ((ids >= 0) & (ids < num_groups)).all()
    distinct = sorted(set(true[true >= 0].tolist()))
    # True groups first, ascending; the rest are other groups.
    np.testing.assert_array_equal(ids[:len(distinct)], distinct)
    assert not set(ids[len(distinct):].tolist()) & set(distinct)
    np.testing.assert_array_equal(slots < 0, true < 0)
    np.testing.assert_array_equal(ids[slots[true >= 0]], true[true >= 0])


def test_deterministic_given_rng_and_varies_with_it():
  true = np.array([5, 2, -1, 5])
  f = jax.jit(sample_groups, static_argnums=(1, 2))
  a = f(true, 100, 10, jax.random.key(0))
  chex.assert_trees_all_equal(a, f(true, 100, 10, jax.random.key(0)),
                              sample_groups(true, 100, 10, jax.random.key(0)))
  b = f(true, 100, 10, jax.random.key(1))
  np.testing.assert_array_equal(a[0][:2], b[0][:2])
  assert set(np.asarray(a[0][2:]).tolist()) != set(np.asarray(b[0][2:]).tolist())


def test_random_fill_is_uniform_over_other_groups():
  num_groups, num_sampled, trials = 12, 5, 2000
  true = jnp.array([3, 9, -1])
  keys = jax.random.split(jax.random.key(0), trials)
  ids, _ = jax.vmap(lambda k: sample_groups(true, num_groups, num_sampled,
                                            k))(keys)
  counts = np.bincount(np.asarray(ids[:, 2:]).ravel(), minlength=num_groups)
  assert counts[3] == counts[9] == 0
  others = np.delete(counts, [3, 9])
  expected = trials * 3 / 10  # 3 random places among 10 other groups
  # Binomial std is about sqrt(600 * 0.7) ~ 20; allow 5 sigma.
  assert np.abs(others - expected).max() < 100, others


def test_out_of_range_groups():
  with pytest.raises(ValueError, match=r"got 7 at index \(1,\)"):
    sample_groups(np.array([0, 7]), 7, 3, jax.random.key(0))
  ids, slots = jax.jit(sample_groups, static_argnums=(1, 2))(
      jnp.array([0, 7, -3]), 7, 3, jax.random.key(0))
  assert ids[0] == 0 and slots.tolist() == [0, -1, -1]


def test_argument_errors():
  with pytest.raises(ValueError, match=r"= \[3, 10\] so that every true group fits"):
    sample_groups(np.array([0, 1, 2]), 10, 2, jax.random.key(0))
  with pytest.raises(ValueError, match=r"= \[3, 10\] so that every true group fits"):
    sample_groups(np.array([0, 1, 2]), 10, 11, jax.random.key(0))
  with pytest.raises(TypeError, match="integers"):
    sample_groups(np.array([0., 1.]), 10, 3, jax.random.key(0))


def test_no_retrace_and_batch_sharded_over_8_devices():
  mesh = jax.make_mesh((8,), ("data",),
                       axis_types=(jax.sharding.AxisType.Explicit,))

  @functools.partial(jax.jit, static_argnums=(1, 2))
  @chex.assert_max_traces(n=1)
  def f(true, num_groups, num_sampled, key):
    return sample_groups(true, num_groups, num_sampled, key)

  chex.clear_trace_counter()
  rng = np.random.default_rng(0)
  for i in range(3):
    true = jnp.asarray(rng.integers(-1, 40, (16, 2)))
    unsharded = f(true, 40, 32, jax.random.key(i))
    sharded = sample_groups(
        jax.device_put(true, NamedSharding(mesh, P("data"))), 40, 32,
        jax.random.key(i))
    chex.assert_trees_all_equal(unsharded, sharded)
