"""Transformer language model: pure Flax Linen modules, parameter counts and FLOPs per token
(no meshes, files or optimisers)."""
