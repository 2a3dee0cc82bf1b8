"""Evaluation: held-out loss, scaling ladders, scaling-law fits, saturation, reports, generation, zero-shot."""
