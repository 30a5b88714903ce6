"""A fake ``pecos`` package for tests of benchmarks/pecos_peer.py's exchange.

libpecos cannot be installed beside jax (numpy<2, scipy<1.14), so the
benchmarks run benchmarks/pecos_peer.py under a side interpreter. Tests put
this stand-in on PYTHONPATH and use ``sys.executable`` as that interpreter.
Its model scores ``x @ (x_train.T @ y_train)`` and returns, per row, the top
``only_topk`` positive scores as a sparse matrix (rows may be short), so a
test can rebuild the expected top-k with :func:`reference_topk`.

  site = fake_pecos.install(tmp_path / "site")
  monkeypatch.setenv("PYTHONPATH", str(site))
"""

import pathlib

import numpy as np

SOURCE = '''
"""Stand-in for libpecos XR-Linear: scores = x @ (x_train.T @ y_train)."""
import numpy as np
import scipy.sparse as sp
__version__ = "fake"


class LabelEmbeddingFactory:
  @staticmethod
  def create(y, x, method):
    assert method == "pifa"
    return sp.csr_matrix(y.T @ x)


class Indexer:
  @staticmethod
  def gen(feat):
    return feat.shape[0]


class _Model:
  def __init__(self, w):
    self.w = w

  def predict(self, x, only_topk):
    dense = np.asarray((x @ self.w).todense())
    out = np.zeros_like(dense)
    for i, row in enumerate(dense):
      keep = np.argsort(-row, kind="stable")[:only_topk]
      keep = keep[row[keep] > 0]  # sparse output: rows may be short
      out[i, keep] = row[keep]
    return sp.csr_matrix(out)


class XLinearModel:
  @staticmethod
  def train(x, y, C):
    assert C == y.shape[1]
    return _Model(sp.csr_matrix(x.T @ y))
'''


def install(site: pathlib.Path) -> pathlib.Path:
  """Writes the fake ``pecos`` package under ``site``; returns ``site``.

  Args:
    site: a directory to put on PYTHONPATH (created if missing).

  Returns:
    ``site``.
  """
  fake = pathlib.Path(site) / "pecos"
  (fake / "xmc" / "xlinear").mkdir(parents=True, exist_ok=True)
  (fake / "__init__.py").write_text("__version__ = 'fake'\n")
  (fake / "xmc" / "__init__.py").write_text(
      "from pecos.xmc.xlinear.model import LabelEmbeddingFactory, Indexer\n")
  (fake / "xmc" / "xlinear" / "__init__.py").write_text("")
  (fake / "xmc" / "xlinear" / "model.py").write_text(SOURCE)
  return pathlib.Path(site)


def reference_topk(x_train, y_train, x_test, k: int) -> list[list[int]]:
  """The fake model's top-k per test row by numpy brute force, positives only.

  Args:
    x_train: [N, F] training features (sparse or dense).
    y_train: [N, L] training labels (sparse or dense).
    x_test: [M, F] test features (sparse or dense).
    k: labels per row.

  Returns:
    M lists of at most k label ids, best first (ties: smaller id first).
  """
  dense = lambda m: m.toarray() if hasattr(m, "toarray") else np.asarray(m)
  scores = (dense(x_test).astype(np.float64)
            @ (dense(x_train).astype(np.float64).T
               @ dense(y_train).astype(np.float64)))
  return [[int(c) for c in np.argsort(-row, kind="stable")[:k] if row[c] > 0]
          for row in scores]
