"""Decoding on a 2x2x2 data x fsdp x tensor mesh of 8 CPU devices equals one device, for
tests/test_seq2seq_decode.py: the eval.generate and eval.translate CLIs on saved runs trace the
model's sharding constraints and decode 3 rows while the mesh splits the batch 4 ways (data x
fsdp).

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/workers/decode_mesh.py DIR

Raises (exit code 1) on a mismatch; prints `OK` otherwise.
"""

import io
import os
import pathlib
import sys
import tempfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from configs import base
from configs import transformer
from eval import generate
from eval import seq2seq
from eval import translate
from model.config import ModelConfig
from model.transformer import Transformer
from train import checkpoint
from train import run as run_lib

TINY = dict(d_model=32, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=16, mlp_dim=64)
TINY.update(vocab_size=260, max_seq_len=32, init_std=0.3)


def save_run(workdir: pathlib.Path, config) -> str:
  """A params-only run of `config` (tiny, random weights) laid out on the 2x2x2 mesh."""
  config.model.update(TINY)
  config.data.update(tokenizer="byte", seq_len=32)
  config.train.batch_size = 8
  config.mesh.shape = (2, 2, 2)
  model = Transformer(ModelConfig.from_config(config.model))
  params = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
  checkpoint.save_params(str(workdir), nn.unbox(params), config)
  return str(workdir)


def one_device_run(workdir: str) -> run_lib.Run:
  """The same run on one device: the unsharded reference."""
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
  return run_lib.load_run(workdir, mesh=mesh)


def run_cli(main, argv, rows: int) -> str:
  """What main(argv) writes to file descriptor 1 (TextStreamer holds the original stdout).
  Checks that it traced the model's sharding constraints on its batch of `rows` rows, split
  over data x fsdp (outside the run's mesh context the model's constraints are dropped)."""
  real, constrained = jax.lax.with_sharding_constraint, set()

  def spy(x, sharding):
    constrained.add((x.shape[0], getattr(sharding, "spec", sharding)[0]))
    return real(x, sharding)

  sys.stdout.flush()
  saved = os.dup(1)
  with tempfile.TemporaryFile("w+", encoding="utf-8") as f:
    os.dup2(f.fileno(), 1)
    jax.lax.with_sharding_constraint = spy
    try:
      main(argv)
      sys.stdout.flush()
    finally:
      jax.lax.with_sharding_constraint = real
      os.dup2(saved, 1)
      os.close(saved)
    f.seek(0)
    assert (rows, ("data", "fsdp")) in constrained, (main.__module__, constrained)
    return f.read()


def check_generate(workdir: str) -> None:
  """Greedy samples through the CLI (1, streamed as it decodes, and 3) equal the one-device
  Generator's."""
  prompt, argv = "ab", ["--workdir", workdir, "--prompt", "ab", "--temperature", "0", "--no-stop"]
  run = one_device_run(workdir)
  tok = run.tokenizer
  gen = generate.Generator(run.spec.model, run.params, pad_id=tok.pad_id)
  sampling = generate.SamplingConfig(max_new_tokens=6, temperature=0.0)
  for n in (1, 3):
    got = run_cli(generate.main, argv + ["--num-samples", str(n), "--max-new-tokens", "6"], n)
    rows = gen.generate([[tok.bos_id] + tok.encode(prompt)] * n, sampling)["tokens"]
    want = "".join(f"--- sample {r} ---\n{prompt}{tok.decode(row)}\n" for r, row in enumerate(rows))
    if n == 1:  # what the streamer prints
      streamed = io.StringIO()
      streamer = generate.TextStreamer(tok, 1, out=streamed)
      for t in rows[0]:
        streamer(0, [t], [False])
      streamer._flush(0)
      want = f"{prompt}{streamed.getvalue()}\n"
    assert got == want, (n, got, want)


def check_translate(workdir: str, tmp: pathlib.Path) -> None:
  """Beam search over three sources through the CLI equals the one-device decode."""
  sources = ["ab cd", "efgh", "i"]
  (tmp / "src.txt").write_text("\n".join(sources) + "\n")
  (tmp / "ref.txt").write_text("\n".join(s[::-1] for s in sources) + "\n")
  out = tmp / "hyp.txt"
  argv = ["--workdir", workdir, "--src", str(tmp / "src.txt"), "--ref", str(tmp / "ref.txt")]
  run_cli(translate.main, argv + ["--beam", "2", "--max-len", "6", "--out", str(out)], 3)
  want = seq2seq.decode_texts(one_device_run(workdir), sources, beam=2, max_len=6)
  assert out.read_text() == "\n".join(want) + "\n", (out.read_text(), want)


def main(tmp: pathlib.Path) -> None:
  assert jax.device_count() == 8
  check_generate(save_run(tmp / "lm", base.base_config()))
  encoder_decoder = transformer.get_config("size=tiny")
  encoder_decoder.model.num_decoder_layers = 1
  check_translate(save_run(tmp / "ed", encoder_decoder), tmp)
  print("OK")


if __name__ == "__main__":
  main(pathlib.Path(sys.argv[1]))
