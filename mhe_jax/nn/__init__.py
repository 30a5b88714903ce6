"""Flax NNX modules: heads, encoders and the encoder + head classifier."""

from mhe_jax.nn.heads import MHCHead
from mhe_jax.nn.heads import MHPHead
from mhe_jax.nn.heads import MHSHead
from mhe_jax.nn.heads import VanillaHead
from mhe_jax.nn.models import Classifier

__all__ = ["Classifier", "MHCHead", "MHPHead", "MHSHead", "VanillaHead"]
