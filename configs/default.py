"""The tiny default: a byte-level GPT that trains on the CPU in minutes.

    python -m train --config configs/default.py --workdir runs/default
"""

from configs import base


def get_config(arg: str = ""):
  del arg
  c = base.base_config()
  c.name = "default"
  return c
