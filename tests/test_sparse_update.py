"""MHS sparse update: ops against numpy and optax, the optimiser against a
numpy lazy Adam / momentum SGD / SGD, sparse SGD == dense optax SGD,
class-sharded == unsharded, the trainer."""

import contextlib
import functools

from flax import nnx
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from mhe_jax import LabelCodec
from mhe_jax import sharding as sharding_lib
from mhe_jax import train
from mhe_jax.nn.mhs import MHSHead
from mhe_jax.nn.mhs import SparseUpdateOptimizer
from mhe_jax.ops import sparse_update
from mhe_jax.ops.sampling import sample_groups
import tiny_config

LR = 1e-2


def _class_mesh():
  return sharding_lib.make_mesh((1, 8), ("data", "classes"))


# ------------------------------------------------------------------ the ops
@pytest.mark.parametrize("num_blocks,block", [(16, 6), (12, 8)])
@pytest.mark.parametrize("placement", ["one_device", "replicated", "sharded"])
def test_gather_and_scatter_blocks(num_blocks, block, placement):
  """Equal numpy's fancy indexing; other entries untouched; sharding kept.

  Off a mesh the blocks are dynamic slices in a loop; on the 8-device mesh
  XLA gathers and scatters: replicated, and on 8 class shards, where
  (16, 6) keeps whole blocks per device (windowed path) and (12, 8) splits
  blocks across devices (column path).
  """
  rng = np.random.default_rng(0)
  table = rng.normal(size=(5, num_blocks * block)).astype(np.float32)
  ids = np.array([7, 0, 11, 3], np.int32)
  values = rng.normal(size=(5, ids.size * block)).astype(np.float32)
  cols = (ids[:, None] * block + np.arange(block)).reshape(-1)
  want = table.copy()
  want[:, cols] = values
  mesh = _class_mesh()
  with (contextlib.nullcontext() if placement == "one_device"
        else jax.set_mesh(mesh)):
    t = jnp.asarray(table)
    if placement == "sharded":
      t = jax.device_put(t, NamedSharding(mesh, P(None, "classes")))
    got_block = jax.jit(sparse_update.gather_blocks, static_argnums=2)(
        t, ids, block)
    scatter = jax.jit(sparse_update.scatter_blocks, static_argnums=3,
                      donate_argnums=0)
    got = scatter(t, ids, values, block)
    got_bias = jax.jit(sparse_update.scatter_blocks, static_argnums=3)(
        jnp.asarray(table[0]), ids, values[0], block)
  np.testing.assert_array_equal(got_block, table[:, cols])
  np.testing.assert_array_equal(got, want)  # bit for bit, rows and the rest
  np.testing.assert_array_equal(got_bias, want[0])
  np.testing.assert_array_equal(
      sparse_update.gather_blocks(table[0], ids, block), table[0, cols])
  if placement == "sharded":
    assert got.sharding.spec == P(None, "classes")


def test_scatter_of_a_donated_table_makes_no_copy():
  table = jax.ShapeDtypeStruct((64, 4096), jnp.float32)  # 1 MiB
  ids = jax.ShapeDtypeStruct((4,), jnp.int32)

  def step(t, ids):
    block = sparse_update.gather_blocks(t, ids, 32)
    return sparse_update.scatter_blocks(t, ids, block * 0.5 + 1., 32)

  mem = jax.jit(step, donate_argnums=0).lower(table, ids).compile(
      ).memory_analysis()
  assert mem.alias_size_in_bytes == 64 * 4096 * 4
  assert mem.temp_size_in_bytes < 4 * (64 * 4 * 32 * 4), mem  # blocks only


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_lazy_adam_on_rows_sampled_every_step_is_optax_adam(weight_decay):
  rng = np.random.default_rng(1)
  param = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
  tx = (optax.adamw(LR, weight_decay=weight_decay) if weight_decay
        else optax.adam(LR))
  state, want = tx.init(param), param
  mu = nu = jnp.zeros_like(param)
  got = param
  for t in range(1, 5):
    grad = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
    updates, state = tx.update(grad, state, want)
    want = optax.apply_updates(want, updates)
    got, mu, nu = sparse_update.lazy_adam(got, grad, mu, nu, t,
                                          learning_rate=LR,
                                          weight_decay=weight_decay)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_lazy_momentum_on_rows_sampled_every_step_is_optax_sgd():
  rng = np.random.default_rng(2)
  param = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
  tx = optax.sgd(0.3, momentum=0.9)
  state, want, got, trace = tx.init(param), param, param, jnp.zeros((3, 4))
  for _ in range(4):
    grad = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
    updates, state = tx.update(grad, state, want)
    want = optax.apply_updates(want, updates)
    got, trace = sparse_update.lazy_momentum(got, grad, trace,
                                             learning_rate=0.3)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


# --------------------------------------------------- the optimiser on a head
D, C, B, S_BUDGET, STEPS = 5, 96, 3, 4, 6


def _inputs(step):
  key = jax.random.key(100 + step)
  x = jax.random.normal(key, (B, D))
  y = jax.random.randint(jax.random.fold_in(key, 1), (B,), 0, C)
  return x, y, jax.random.fold_in(key, 2)


def _sparse_run(radices, rule, mesh=None):
  """STEPS sparse steps of a lone MHS head; the states before and after each
  step (numpy) and the sampled group ids."""
  head = MHSHead(D, LabelCodec(radices, C), S_BUDGET, rngs=nnx.Rngs(0))
  opt = SparseUpdateOptimizer(head, optax.adam(LR), rule=rule)
  if mesh is not None:  # the kernel, bias and their state class-sharded
    graphdef, state = nnx.split((head, opt))
    shardings = sharding_lib.tree_shardings(
        nnx.get_partition_spec(state), mesh, sharding_lib.DEFAULT_RULES)
    head, opt = nnx.merge(graphdef, jax.device_put(state, shardings))

  @nnx.jit
  def step(head, opt, x, y, rng):
    loss, grads, rows = opt.value_and_grad(
        lambda h: h.loss(x, y, rng=rng), head)
    opt.update(head, grads)
    opt.update_rows(head, rows, LR)
    return loss, rows.group_ids

  snapshots, samples = [], []
  for i in range(STEPS):
    before = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(
        (head, opt))))
    with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
      _, ids = step(head, opt, *_inputs(i))
    snapshots.append(before)
    samples.append(np.asarray(ids))
  snapshots.append(jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(
      (head, opt)))))
  return head, opt, snapshots, samples


def _numpy_block_grads(kernel, bias, x, y, ids, s):
  """Softmax CE over the sampled classes (mean over B), float64."""
  cols = (ids[:, None] * s + np.arange(s)).reshape(-1)
  logits = x @ kernel[:, cols] + bias[cols]
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  slot = {g: t for t, g in enumerate(ids)}
  target = np.array([slot[g] * s + r for g, r in zip(y // s, y % s)])
  p[np.arange(len(y)), target] -= 1
  dlogits = p / len(y)
  return cols, x.T @ dlogits, dlogits.sum(0)


@pytest.mark.parametrize("rule", ["adam", "momentum", "sgd"])
def test_sparse_update_is_lazy_rule_on_sampled_rows_only(rule):
  radices = (12, 8)
  s = radices[1]
  _, _, snaps, samples = _sparse_run(radices, rule)
  # The samples are the head's: sample_groups of the batch's groups.
  for i, ids in enumerate(samples):
    _, y, rng = _inputs(i)
    want_ids, _ = sample_groups(np.asarray(y) // s, radices[0], S_BUDGET, rng)
    np.testing.assert_array_equal(ids, want_ids)
  # The scenario holds rows sampled on consecutive steps and rows skipped
  # between two samples.
  sets = [set(ids.tolist()) for ids in samples]
  assert any(a & b for a, b in zip(sets, sets[1:]))
  assert any(g in sets[i] and g not in sets[i + 1] and g in sets[j]
             for i in range(STEPS - 1) for j in range(i + 2, STEPS)
             for g in range(radices[0]))

  f64 = lambda a: np.asarray(a, np.float64)
  head0 = snaps[0][0]
  kernel, bias = f64(head0["kernel"]), f64(head0["bias"])
  slots = ({"mu": np.zeros_like(kernel), "nu": np.zeros_like(kernel)},
           {"mu": np.zeros_like(bias), "nu": np.zeros_like(bias)})
  trace = (np.zeros_like(kernel), np.zeros_like(bias))
  for i, ids in enumerate(samples):
    x, y, _ = _inputs(i)
    cols, g_k, g_b = _numpy_block_grads(kernel, bias, f64(x), np.asarray(y),
                                        ids, s)
    t = i + 1  # the global step, for the bias correction
    for j, (param, grad) in enumerate(((kernel, g_k), (bias, g_b))):
      if rule == "adam":
        mu, nu = slots[j]["mu"], slots[j]["nu"]
        mu[..., cols] = 0.9 * mu[..., cols] + 0.1 * grad
        nu[..., cols] = 0.999 * nu[..., cols] + 0.001 * grad ** 2
        param[..., cols] -= LR * (mu[..., cols] / (1 - 0.9 ** t)) / (
            np.sqrt(nu[..., cols] / (1 - 0.999 ** t)) + 1e-8)
      elif rule == "momentum":
        trace[j][..., cols] = grad + 0.9 * trace[j][..., cols]
        param[..., cols] -= LR * trace[j][..., cols]
      else:
        param[..., cols] -= LR * grad
    got_head, got_opt = snaps[i + 1][0], snaps[i + 1][1]
    np.testing.assert_allclose(got_head["kernel"], kernel, rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(got_head["bias"], bias, rtol=1e-5, atol=1e-6)
    if rule == "adam":
      np.testing.assert_allclose(got_opt["kernel_nu"], slots[0]["nu"],
                                 rtol=1e-4, atol=1e-12)
      np.testing.assert_allclose(got_opt["bias_mu"], slots[1]["mu"],
                                 rtol=1e-4, atol=1e-9)
    elif rule == "momentum":
      np.testing.assert_allclose(got_opt["kernel_trace"], trace[0],
                                 rtol=1e-5, atol=1e-7)
    else:  # no state beside the step count
      assert not [k for k in got_opt if k.startswith(("kernel_", "bias_"))]
    # Rows off the sample, and their state, are untouched bit for bit.
    off = np.setdiff1d(np.arange(kernel.shape[1]), cols)
    prev_head, prev_opt = snaps[i][0], snaps[i][1]
    for name in ("kernel", "bias"):
      np.testing.assert_array_equal(got_head[name][..., off],
                                    prev_head[name][..., off])
    for name, value in got_opt.items():
      if name.startswith(("kernel_", "bias_")):
        np.testing.assert_array_equal(value[..., off],
                                      prev_opt[name][..., off])


@pytest.mark.parametrize("rule", ["adam", "momentum", "sgd"])
@pytest.mark.parametrize("radices", [(16, 6), (12, 8)])
def test_class_sharded_equals_one_device(radices, rule):
  """Momentum too: Adam's step would hide a gradient scaled by the shards."""
  _, _, want, want_ids = _sparse_run(radices, rule)
  head, opt, got, got_ids = _sparse_run(radices, rule, _class_mesh())
  np.testing.assert_array_equal(np.stack(got_ids), np.stack(want_ids))
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-6,
                                 atol=1e-7), got[-1], want[-1])
  tables = {"adam": ["kernel_mu"], "momentum": ["kernel_trace"],
            "sgd": []}[rule]
  tables = [getattr(opt, name) for name in tables]
  for var in (head.kernel, *tables):
    assert var[...].sharding.spec == P(None, "classes")


def test_sparse_sgd_is_the_dense_optax_sgd_step():
  """Plain SGD needs no lazy semantics: over steps with different samples,
  the sparse step equals nnx.Optimizer(optax.sgd) on the dense gradient of
  the same sampled loss (zero off the sample)."""
  radices = (12, 8)
  head, _, snaps, _ = _sparse_run(radices, "sgd")
  dense = MHSHead(D, LabelCodec(radices, C), S_BUDGET, rngs=nnx.Rngs(0))
  opt = nnx.Optimizer(dense, optax.sgd(LR), wrt=nnx.Param)

  @nnx.jit
  def step(dense, opt, x, y, rng):
    grads = nnx.grad(lambda h: h.loss(x, y, rng=rng))(dense)
    opt.update(dense, grads)

  for i in range(STEPS):
    step(dense, opt, *_inputs(i))
    got = snaps[i + 1][0]
    np.testing.assert_allclose(got["kernel"], dense.kernel[...], rtol=1e-6,
                               atol=1e-7)
    np.testing.assert_allclose(got["bias"], dense.bias[...], rtol=1e-6,
                               atol=1e-7)
  np.testing.assert_array_equal(head.kernel[...], snaps[-1][0]["kernel"])


@pytest.mark.parametrize("rule", ["adam", "momentum", "sgd"])
def test_sparse_step_memory_is_the_tables_and_a_few_blocks(rule):
  """Compiled with the state donated, a step aliases every table (the
  parameters and their state are updated in place) and its temporaries are
  a few sampled blocks, far from one table."""
  d, radices, batch = 32, (256, 256), 4  # kernel [32, 65536]: 8 MiB

  def create():
    head = MHSHead(d, LabelCodec(radices, 256 * 256), batch, rngs=nnx.Rngs(0))
    return head, SparseUpdateOptimizer(head, optax.adam(LR), rule=rule)

  graphdef, abstract = nnx.split(nnx.eval_shape(create))

  def step(state, x, y, rng):
    head, opt = nnx.merge(graphdef, state)
    loss, grads, rows = opt.value_and_grad(
        lambda h: h.loss(x, y, rng=rng), head)
    opt.update(head, grads)
    opt.update_rows(head, rows, LR)
    return nnx.state((head, opt)), loss

  args = (jax.ShapeDtypeStruct((batch, d), jnp.float32),
          jax.ShapeDtypeStruct((batch,), jnp.int32),
          jax.eval_shape(lambda: jax.random.key(0)))
  mem = jax.jit(step, donate_argnums=0).lower(abstract, *args).compile(
      ).memory_analysis()
  table = d * 65536 * 4
  block = d * batch * 256 * 4  # the 4 sampled groups' kernel columns
  tables = {"adam": 3, "momentum": 2, "sgd": 1}[rule]
  assert mem.alias_size_in_bytes >= tables * table
  assert mem.temp_size_in_bytes < 8 * block <= table / 4, mem.temp_size_in_bytes


def test_value_and_grad_needs_the_training_loss():
  head = MHSHead(D, LabelCodec((12, 8), C), S_BUDGET, rngs=nnx.Rngs(0))
  opt = SparseUpdateOptimizer(head, optax.adam(LR))
  x, y, _ = _inputs(0)
  with pytest.raises(ValueError, match="never drew an MHS sample"):
    opt.value_and_grad(lambda h: h.loss(x, y), head)  # no rng: full softmax
  with pytest.raises(ValueError, match="unknown sparse-update rule"):
    SparseUpdateOptimizer(head, optax.adam(LR), rule="lion")


# ------------------------------------------------------------- the trainer
def _config(steps, every, **overrides):
  # 2,000 single labels in 200 groups of 10: a batch of 64 samples 64 groups.
  return tiny_config.make(steps, every, **{
      "data.multilabel": False, "data.num_classes": 2000,
      "head.type": "mhs", "head.radices": (200, 10),
      "head.num_sampled_groups": 64, "head.sparse_update": True,
      "optimizer.schedule": "constant", "optimizer.learning_rate": 5e-3,
      **overrides})


def _steps(config, workdir, n=3):
  trainer = train.Trainer(config, workdir)
  state = trainer.init_state()
  it = iter(train.pipeline.train_loader(trainer.data.train, 64, seed=0))
  losses = []
  for step in range(n):
    state, m = trainer.train_step(state, next(it), step)
    losses.append(float(m["loss"]))
  params = nnx.to_pure_dict(nnx.filter_state(state[0], nnx.Param))
  return losses, jax.tree.map(np.asarray, params), state


@pytest.mark.parametrize("name,lr,classifier", [
    ("sgd", 0.5, "same"), ("adam", 5e-3, "same"),
    ("adam", 5e-3, "sgd_momentum"), ("adam", 5e-3, "sgd")])
def test_trainer_sparse_with_every_group_is_dense(tmp_path, name, lr,
                                                  classifier):
  """With all groups sampled every row is updated every step: the lazy rule
  is the dense one, so the sparse step equals the dense step (grad_clip on:
  the clip sees the same norm), the classifier's own rule
  (optimizer.classifier at classifier_learning_rate) included. Adam is
  compared on the head only: its sign-like steps on near-zero encoder
  gradients (rare features) amplify rounding differences."""
  over = {"head.num_sampled_groups": 200, "optimizer.grad_clip": 0.05,
          "optimizer.name": name, "optimizer.learning_rate": lr,
          "optimizer.classifier": classifier,
          "optimizer.classifier_learning_rate": (
              0.0 if classifier == "same" else 0.3)}
  dense = _steps(_config(3, 3, **over, **{"head.sparse_update": False}),
                 tmp_path / "dense")
  sparse = _steps(_config(3, 3, **over), tmp_path / "sparse")
  np.testing.assert_allclose(sparse[0], dense[0], rtol=1e-6)
  got, want = (sparse[1], dense[1]) if name == "sgd" else (
      sparse[1]["head"], dense[1]["head"])
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4,
                                 atol=1e-6), got, want)


def test_trainer_class_sharded_equals_data_parallel(tmp_path):
  """SGD (lazy momentum rows), which a mis-scaled gradient would change."""
  over = {"optimizer.name": "sgd", "optimizer.learning_rate": 0.5}
  a = _steps(_config(3, 3, **over, **{"mesh.shape": (8, 1)}), tmp_path / "a")
  b = _steps(_config(3, 3, **over, **{"mesh.shape": (1, 8)}), tmp_path / "b")
  np.testing.assert_allclose(b[0], a[0], rtol=2e-6)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4,
                                 atol=1e-6), b[1], a[1])
  spec = b[2][1]["kernel_trace"][...].sharding.spec
  assert spec == P(None, "classes"), spec


def _checkpoint(workdir, step):
  path = workdir / "checkpoints" / str(step) / "state"
  return ocp.StandardCheckpointer().restore(path.absolute())


def test_trainer_sparse_learns_and_resumes_exactly(tmp_path):
  straight = train.train_and_evaluate(_config(40, 20), tmp_path / "straight")
  # 64 of 200 groups per step; chance acc@1 is 1/2000.
  assert straight["acc@1"] > 0.1, straight
  train.train_and_evaluate(_config(20, 20), tmp_path / "resumed")
  resumed = train.train_and_evaluate(_config(40, 20), tmp_path / "resumed")
  assert resumed["acc@1"] == straight["acc@1"]
  a = _checkpoint(tmp_path / "straight", 40)
  b = _checkpoint(tmp_path / "resumed", 40)
  assert {"kernel_mu", "kernel_nu"} <= set(a["1"])  # saved with the run
  jax.tree.map(np.testing.assert_array_equal, a, b)
