"""Experiment configs: `ml_collections` files of the form `get_config(arg)`.

Config files are data, not logic: they import no JAX code. `configs.base` holds the
full schema with defaults; each preset file overrides the parts it cares about.
"""
