"""Transformer language model: pure Flax Linen modules and accounting (no meshes, files or optimisers)."""
