"""A Gaussian-mixture classification task with many classes.

Class ``c`` has a centre ``mu_c ~ N(0, I_d)``; an example of class ``c`` is
``x = mu_c + noise * N(0, I_d)``. Class ids are assigned to centres at
random, so label order carries no information (the setting of the paper's
label-order experiments). Memory is O(num_classes * dim) for the centres.

Example::

  task = GaussianMixture(num_classes=2000, dim=64, noise=0.5, seed=0)
  x_nd, y_n = task.sample(1024, seed=1)
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class GaussianMixture:
  """A C-class isotropic Gaussian mixture in ``dim`` dimensions."""

  num_classes: int
  dim: int
  noise: float
  seed: int = 0

  def __post_init__(self):
    if self.num_classes < 2:
      raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
    if self.dim < 1:
      raise ValueError(f"dim must be >= 1, got {self.dim}")
    if self.noise < 0:
      raise ValueError(f"noise must be >= 0, got {self.noise}")

  @property
  def centres(self) -> np.ndarray:
    """float32 ``[C, dim]`` class centres (deterministic by seed)."""
    rng = np.random.default_rng(self.seed)
    return rng.standard_normal((self.num_classes, self.dim), np.float32)

  def sample(self, num_examples: int, seed: int,
             centres: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Draws ``(x float32 [N, dim], y int32 [N])`` with uniform classes."""
    centres = self.centres if centres is None else centres
    rng = np.random.default_rng([self.seed, seed])
    y = rng.integers(0, self.num_classes, num_examples).astype(np.int32)
    x = centres[y] + self.noise * rng.standard_normal(
        (num_examples, self.dim), np.float32)
    return x.astype(np.float32), y
