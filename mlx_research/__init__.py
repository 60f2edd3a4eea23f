"""mlx_research: JAX/Flax building blocks, losses, models and one generic trainer."""
