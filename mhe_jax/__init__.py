"""mhe_jax: Multi-Head Encoding for extreme label classification."""
