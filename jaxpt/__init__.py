"""jaxpt: JAX-native LLM post-training (data generation, refinement, evaluation)."""

__version__ = "0.1.0"
