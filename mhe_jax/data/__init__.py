"""Data: file formats, corpora, synthetic generators, TFDS builders, pipelines.

Depends on neither ``mhe_jax.nn`` nor ``mhe_jax.train``.
"""
