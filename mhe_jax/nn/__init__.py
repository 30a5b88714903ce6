"""Flax NNX modules: heads, encoders, the encoder + head classifier, and the
sibling methods UniDEC (DualEncoderClassifier) and LightDXML."""

from mhe_jax.nn.heads import MHCHead
from mhe_jax.nn.heads import MHPHead
from mhe_jax.nn.heads import MHSHead
from mhe_jax.nn.heads import VanillaHead
from mhe_jax.nn.lightdxml import LightDXML
from mhe_jax.nn.models import Classifier
from mhe_jax.nn.unidec import DualEncoderClassifier

__all__ = ["Classifier", "DualEncoderClassifier", "LightDXML", "MHCHead",
           "MHPHead", "MHSHead", "VanillaHead"]
