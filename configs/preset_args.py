"""Parses a preset's `arg` string ("size=124M" or "k=v,k2=v2") and picks a size entry.

Shared by the model presets (gpt1, gpt2, gpt3, bert, llama); imports no JAX."""


def parse(arg: str, allowed: dict[str, str], preset: str) -> dict[str, str]:
  """Returns `allowed` (the defaults) updated with the k=v pairs in `arg`."""
  out = dict(allowed)
  for item in filter(None, (s.strip() for s in (arg or "").split(","))):
    if "=" not in item:
      raise ValueError(
          f"{preset}: bad argument {item!r}; use k=v, e.g. "
          f"{preset}.py:{next(iter(allowed))}=..."
      )
    key, value = (s.strip() for s in item.split("=", 1))
    if key not in allowed:
      raise ValueError(f"{preset}: unknown argument {key!r}; valid: {sorted(allowed)}")
    out[key] = value
  return out


def pick_size(sizes: dict, size: str, preset: str):
  if size not in sizes:
    raise ValueError(
        f"{preset}: unknown size {size!r}; valid sizes: {'|'.join(sizes)} "
        f"(e.g. --config configs/{preset}.py:size={next(iter(sizes))})"
    )
  return sizes[size]
