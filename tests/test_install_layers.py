"""The core (ops, nn) works without the extras; the rest names its extra.

A subprocess hides the extras' packages behind a ``sys.meta_path`` finder
(as if only ``pip install mhe_jax`` had run), imports ``mhe_jax``,
``mhe_jax.ops`` and ``mhe_jax.nn``, trains an ``MHPHead`` in a user's NNX model
for one optax step and decodes its top-k; then checks that the trainer and
the TFDS builders fail with an ImportError that names ``mhe_jax[train]`` and
``mhe_jax[data]``. A static check keeps every import of a package outside the
core's ``install_requires`` inside ``_extras.requires(EXTRA)`` with EXTRA an
extra that installs it.
"""

import ast
import configparser
import importlib.metadata
import json
import os
import re
import subprocess
import sys

from conftest import REPO_ROOT

# Top-level modules that only the extras install (flax also pulls in orbax
# and etils, but the core must not rely on them).
EXTRA_MODULES = ("orbax", "grain", "tensorflow_datasets", "array_record",
                 "clu", "tensorboardX", "ml_collections", "etils",
                 "importlib_resources", "flatbuffers", "chex")

_SCRIPT = r"""
import json, sys

BLOCKED = set(sys.argv[1].split(","))
hits = []

class _Block:
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in BLOCKED:
      hits.append(name)
      raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    return None

sys.meta_path.insert(0, _Block())
out = {}
try:
  import orbax.checkpoint
  out["blocker"] = "orbax imported"
except ImportError:
  out["blocker"] = "works"
hits.clear()

from flax import nnx
import jax
import jax.numpy as jnp
import optax

import mhe_jax
import mhe_jax.nn
import mhe_jax.ops
from mhe_jax import LabelCodec
from mhe_jax.nn import MHPHead

num_classes, k = 1000, 5
codec = LabelCodec.balanced(num_classes, 2)


class Tagger(nnx.Module):
  def __init__(self, rngs):
    self.body = nnx.Linear(12, 16, rngs=rngs)
    self.head = MHPHead(16, codec, rngs=rngs)

  def loss(self, x, labels):
    return self.head.loss(nnx.relu(self.body(x)), labels)

  def topk(self, x, k):
    return self.head.topk(nnx.relu(self.body(x)), k)


model = Tagger(nnx.Rngs(0))
optimizer = nnx.Optimizer(model, optax.sgd(0.5), wrt=nnx.Param)


@nnx.jit
def train_step(model, optimizer, x, labels):
  loss, grads = nnx.value_and_grad(lambda m: m.loss(x, labels))(model)
  optimizer.update(model, grads)
  return loss


x = jax.random.normal(jax.random.key(1), (8, 12))
labels = jax.random.randint(jax.random.key(2), (8,), 0, num_classes)
loss_before = float(train_step(model, optimizer, x, labels))
loss_after = float(nnx.jit(lambda m: m.loss(x, labels))(model))
scores, top = nnx.jit(lambda m, x: m.topk(x, k))(model, x)
out["core"] = {"loss_before": loss_before, "loss_after": loss_after,
               "scores": scores.tolist(), "labels": top.tolist()}
out["core_hits"] = [h for h in hits if not h.startswith(("etils", "flatbuffers"))]

for name in ("mhe_jax.train", "mhe_jax.data.tfds"):
  try:
    __import__(name)
    out[name] = {"error": None}
  except ImportError as e:
    out[name] = {"error": type(e).__name__, "message": str(e)}
print("RESULT " + json.dumps(out))
"""


def _run_blocked():
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO_ROOT))
  proc = subprocess.run(
      [sys.executable, "-c", _SCRIPT, ",".join(EXTRA_MODULES)],
      cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
      check=False)
  assert proc.returncode == 0, proc.stderr[-4000:]
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  assert lines, proc.stdout[-2000:] + proc.stderr[-2000:]
  return json.loads(lines[-1][len("RESULT "):])


def test_core_without_extras_and_the_extras_named():
  out = _run_blocked()
  assert out["blocker"] == "works"

  # The core trains a head one optax step and decodes; it never asked for an
  # extra's module (jax itself tries etils and flatbuffers, optionally).
  assert out["core_hits"] == []
  core = out["core"]
  assert core["loss_after"] < core["loss_before"]
  scores, labels = core["scores"], core["labels"]
  assert len(labels) == 8 and all(len(row) == 5 for row in labels)
  for row_s, row_l in zip(scores, labels):
    assert row_s == sorted(row_s, reverse=True)
    assert len(set(row_l)) == 5 and all(0 <= l < 1000 for l in row_l)

  for name, extra in (("mhe_jax.train", "train"), ("mhe_jax.data.tfds", "data")):
    err = out[name]
    assert err["error"] == "ModuleNotFoundError", (name, err)
    assert f'pip install "mhe_jax[{extra}]"' in err["message"], err["message"]


# --- static check: imports outside the core sit in _extras.requires(...) ---


def _norm(dist: str) -> str:
  return re.sub(r"[-_.]+", "-", dist).lower()


def _requirements(value: str) -> list[str]:
  lines = [l.strip() for l in value.splitlines()]
  return [l for l in lines if l and not l.startswith("#")]


def _setup_cfg() -> tuple[set[str], dict[str, set[str]]]:
  """Core distributions and, per extra, the distributions it installs."""
  cfg = configparser.ConfigParser()
  cfg.read(REPO_ROOT / "setup.cfg")
  name = _norm(cfg["metadata"]["name"])
  core = {_norm(re.match(r"[A-Za-z0-9_.-]+", r).group())
          for r in _requirements(cfg["options"]["install_requires"])}
  raw = {extra: _requirements(value)
         for extra, value in cfg["options.extras_require"].items()}

  def expand(extra, seen=()):
    dists = set()
    for req in raw[extra]:
      dist = _norm(re.match(r"[A-Za-z0-9_.-]+", req).group())
      if dist == name:  # mhe_jax[a,b]: a self-reference
        for sub in re.search(r"\[(.*)\]", req).group(1).split(","):
          if sub.strip() not in seen:
            dists |= expand(sub.strip(), (*seen, extra))
      else:
        dists.add(dist)
    return dists
  return core, {extra: expand(extra) for extra in raw}


def test_setup_cfg_layers():
  core, extras = _setup_cfg()
  assert core == {"jax", "flax", "optax", "numpy", "scipy", "absl-py"}
  assert {"orbax-checkpoint", "grain", "clu", "ml-collections"} <= extras["train"]
  assert {"tensorflow-datasets", "array-record"} <= extras["data"]
  # The suite tests the trainer and the TFDS builders: test pulls both.
  assert extras["train"] | extras["data"] <= extras["test"]
  assert set().union(*extras.values()) == extras["all"]


def _requires_extra(node: ast.With) -> str | None:
  for item in node.items:
    call = item.context_expr
    if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
        and call.func.attr == "requires"
        and isinstance(call.func.value, ast.Name)
        and call.func.value.id == "_extras"):
      return call.args[0].value
  return None


def _imports(tree: ast.AST):
  """(top-level module, line, extra of the enclosing requires block)."""
  def walk(node, extra):
    if isinstance(node, ast.With):
      extra = _requires_extra(node) or extra
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield alias.name.split(".")[0], node.lineno, extra
    elif isinstance(node, ast.ImportFrom) and node.level == 0:
      yield node.module.split(".")[0], node.lineno, extra
    for child in ast.iter_child_nodes(node):
      yield from walk(child, extra)
  yield from walk(tree, None)


def test_imports_outside_the_core_name_their_extra():
  core, extras = _setup_cfg()
  dists_of = importlib.metadata.packages_distributions()
  problems = []
  for path in sorted((REPO_ROOT / "mhe_jax").rglob("*.py")):
    tree = ast.parse(path.read_text(), str(path))
    for module, line, extra in _imports(tree):
      if module in sys.stdlib_module_names or module in ("mhe_jax",
                                                         "__future__"):
        continue
      dists = {_norm(d) for d in dists_of.get(module, [module])}
      where = f"{path.relative_to(REPO_ROOT)}:{line} import {module}"
      if dists & core:
        continue
      if extra is None:
        problems.append(f"{where}: not in the core and not inside "
                        "_extras.requires(...)")
      elif not dists & extras[extra]:
        problems.append(f"{where}: the {extra!r} extra does not install it")
  assert not problems, "\n".join(problems)


# --- module boundaries: who imports whom -------------------------------------

_MODULES = r"""
import json, sys

def loaded():
  return {m for m in sys.modules if m.split(".")[0] == "mhe_jax"}

import mhe_jax
base = loaded()
import mhe_jax.export
export = loaded() - base
import mhe_jax.train
print("RESULT " + json.dumps({"export": sorted(export),
                              "train": sorted(loaded())}))
"""


def test_module_boundaries():
  # The exported-model runner's module needs no other part of mhe_jax, and
  # the trainer writes the workdir's model description without the
  # predictor or file streaming modules.
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO_ROOT))
  proc = subprocess.run([sys.executable, "-c", _MODULES], cwd=REPO_ROOT,
                        env=env, capture_output=True, text=True, timeout=120,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-4000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
  out = json.loads(line[len("RESULT "):])
  assert out["export"] == ["mhe_jax.export"]
  assert "mhe_jax.model_info" in out["train"]
  assert not {"mhe_jax.inference", "mhe_jax.streaming"} & set(out["train"])
