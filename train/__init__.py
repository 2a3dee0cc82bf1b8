"""Training: mesh and sharding rules, state, the jitted step, optimisers, checkpoints, metrics, data."""
