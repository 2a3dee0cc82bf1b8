"""train.bench runs the real step and reports its numbers (never asserts a speed), and the
CPU device split it shares with `python -m train` is chosen only where the mesh can use it."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

from configs import bench as bench_cfg
from configs import default as default_cfg
from train import cpu_devices

REPO = pathlib.Path(__file__).resolve().parents[1]
KEYS = {
    "config",
    "backend",
    "devices",
    "mesh",
    "attention_impl",
    "batch_size",
    "seq_len",
    "steps",
    "step_ms_median",
    "step_ms_min",
    "step_ms_max",
    "step_ms_iqr",
    "tokens_per_s",
    "model_flops_per_token",
    "model_gflops_per_s",
    "peak_gflops_per_s",
    "peak_source",
    "mfu",
    "compile_s",
    "first_step_s",
    "final_loss",
    "host_peak_rss_bytes",
    "compile_s_12_layers",
    "compile_s_48_layers",
    "compile_ratio_48_vs_12",
}


def test_bench_cli_runs_and_writes_json(tmp_path):
  out = tmp_path / "bench.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  env.pop("XLA_FLAGS", None)
  env.pop(cpu_devices.ENV, None)
  r = subprocess.run(
      [
          sys.executable,
          "-m",
          "train.bench",
          "--config",
          "configs/bench.py:tiny",
          "--steps",
          "2",
          "--warmup",
          "1",
          "--json",
          str(out),
          "--compile_depth_check",
          "--config.train.batch_size=4",
      ],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=900,
  )
  assert r.returncode == 0, r.stdout + r.stderr
  printed = json.loads(r.stdout.strip().splitlines()[-1])
  written = json.loads(out.read_text())
  assert printed == written
  assert KEYS <= set(written), KEYS - set(written)
  assert written["config"] == "bench_tiny" and written["steps"] == 2
  assert written["batch_size"] == 4 and written["seq_len"] == 32
  # 2 CPU devices by default (tiny batch 4 splits), the same split `python -m train` uses.
  assert written["devices"] == 2 and written["mesh"]["data"] == 2
  assert written["step_ms_min"] <= written["step_ms_median"] <= written["step_ms_max"]
  tokens = 4 * 32
  assert written["tokens_per_s"] == pytest.approx(
      tokens / written["step_ms_median"] * 1e3, rel=1e-2
  )
  gflops = written["model_flops_per_token"] * written["tokens_per_s"] / 1e9
  assert written["model_gflops_per_s"] == pytest.approx(gflops, rel=1e-2)
  assert (
      0
      < written["mfu"]
      == pytest.approx(written["model_gflops_per_s"] / written["peak_gflops_per_s"], rel=1e-2)
  )
  assert written["compile_s_12_layers"] > 0 and written["compile_s_48_layers"] > 0
  assert 3.0 < written["final_loss"] < 6.0  # ln(64) = 4.16 for random tokens


def test_bench_configs_match_the_torch_peer():
  """configs/bench.py S/M are torch_gpt.py's S/M (vocab, width, depth, heads, seq, batch)."""
  peer = {"S": (256, 256, 4, 4, 256, 16), "M": (8192, 512, 8, 8, 512, 8)}
  for size, (v, d, layers, heads, seq, batch) in peer.items():
    c = bench_cfg.get_config(size)
    m = c.model
    assert (m.vocab_size, m.d_model, m.num_layers, m.num_heads) == (v, d, layers, heads)
    assert (c.data.seq_len, c.train.batch_size) == (seq, batch)
    assert m.mlp_dim == 4 * d and m.head_dim * heads == d and m.tie_embeddings
    assert (m.dtype, m.param_dtype, m.norm_position, m.pos_encoding) == (
        "float32",
        "float32",
        "pre",
        "learned",
    )
  with pytest.raises(ValueError, match="unknown size"):
    bench_cfg.get_config("XL")


def test_cpu_devices_choice(monkeypatch):
  monkeypatch.delenv(cpu_devices.ENV, raising=False)
  monkeypatch.delenv("SLURM_NTASKS", raising=False)
  monkeypatch.delenv("JAX_COORDINATOR_ADDRESS", raising=False)
  c = bench_cfg.get_config("S")
  assert cpu_devices.choose(c, cpu_count=2) == 2
  assert cpu_devices.choose(c, cpu_count=1) == 1
  odd = bench_cfg.get_config("S")
  odd.train.batch_size = 15
  assert cpu_devices.choose(odd, cpu_count=2) == 1  # batch would not split
  fsdp = default_cfg.get_config()
  fsdp.mesh.shape = (1, -1, 1)
  assert cpu_devices.choose(fsdp, cpu_count=2) == 1  # not the plain data mesh
  multi = bench_cfg.get_config("S")
  multi.distributed.enabled = True
  assert cpu_devices.choose(multi, cpu_count=2) == 1  # one device per process
  monkeypatch.setenv(cpu_devices.ENV, "1")
  assert cpu_devices.choose(c, cpu_count=2) == 1  # opt out


def _side_by_side():
  """scripts/bench_vs_torch.py as a module (it is a script, not a package member)."""
  path = REPO / "scripts" / "bench_vs_torch.py"
  spec = importlib.util.spec_from_file_location("bench_vs_torch", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


@pytest.mark.parametrize(
    "before,after,noisy",
    [(0.3, 2.1, False), (1.0, 3.0, False), (1.6, 2.0, True), (0.2, 3.4, True), (9.0, 9.0, True)],
)
def test_side_by_side_calls_a_loaded_machine_noisy(before, after, noisy):
  reason = _side_by_side().noisy_reason(before, after, max_load=1.0)
  assert bool(reason) == noisy
  if noisy:
    assert "load" in reason


def test_side_by_side_refuses_a_ratio_on_a_loaded_machine(tmp_path):
  """With a load limit below any real load it exits 3 with the reason and writes no ratio."""
  peer = REPO.parent / "shared" / "bench" / "torch_gpt.py"
  if not peer.is_file():
    pytest.skip(f"{peer} (the PyTorch peer) is not present")
  out = tmp_path / "r.json"
  cmd = [sys.executable, "scripts/bench_vs_torch.py", "--config", "tiny", "--rounds", "1"]
  cmd += ["--k", "1", "--torch_python", sys.executable, "--max-load", "-1", "--json", str(out)]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 3, r.stderr[-2000:]
  assert "not quiet" in r.stderr and "--allow-noisy" in r.stderr
  assert not out.exists()
  res = json.loads(r.stdout.strip().splitlines()[-1])
  assert "speedup_ours_vs_torch" not in res
  assert res["cpu_model"] and res["usable_cores"] >= 1 and "load_before" in res


def test_side_by_side_cpu_facts_name_the_cpu():
  facts = _side_by_side().cpu_facts()
  assert facts["cpu_model"] and facts["cpu_count"] >= facts["usable_cores"] >= 1


def _profile_step():
  """scripts/profile_step.py as a module (it imports bench_vs_torch from scripts/)."""
  sys.path.insert(0, str(REPO / "scripts"))
  spec = importlib.util.spec_from_file_location(
      "profile_step", REPO / "scripts" / "profile_step.py"
  )
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_profile_step_names_the_part_of_every_compiled_op():
  """The compiled tiny step's instructions map to the model's parts: its matmuls, attention,
  norms and loss are each found, and the torch op names map to the same parts."""
  import jax  # noqa: PLC0415 (after conftest set JAX_PLATFORMS)

  from train import build  # noqa: PLC0415
  from train import mesh as mesh_lib  # noqa: PLC0415
  from train import spec  # noqa: PLC0415

  ps = _profile_step()
  config = bench_cfg.get_config("tiny")
  built = build.build(
      spec.resolve(config), mesh=mesh_lib.make_mesh(config, devices=jax.devices()[:1])
  )
  meta, opcode = ps.hlo_index(built.train_step.lower().compile().as_text())
  parts = {name: ps.part_of_ours(name, meta, opcode) for name in meta}
  found = set(parts.values())
  for part in ps.PARTS[:5]:  # matmuls, attention core, GELU, layer norm, loss
    assert part in found, part
  dots = [n for n, op in opcode.items() if op == "dot" and "/mlp/" in meta[n][0]]
  assert dots and all(parts[n] == ps.PARTS[0] for n in dots)
  assert ps.part_of_ours("all-reduce.3", meta, opcode) == ps.PARTS[8]
  assert ps.part_of_torch("aten::addmm") == ps.PARTS[0]
  assert ps.part_of_torch("aten::_scaled_dot_product_flash_attention_for_cpu") == ps.PARTS[1]
  assert ps.part_of_torch("aten::native_layer_norm_backward") == ps.PARTS[3]
  assert ps.part_of_torch("Optimizer.step#AdamW.step") == ps.PARTS[7]
  assert ps.part_of_torch("aten::copy_") == ps.PARTS[6]


def test_profile_step_cli_profiles_both_sides(tmp_path):
  peer = REPO.parent / "shared" / "bench" / "torch_gpt.py"
  if not peer.is_file():
    pytest.skip(f"{peer} (the PyTorch peer) is not present")
  out = tmp_path / "p.json"
  cmd = [sys.executable, "scripts/profile_step.py", "--config", "tiny", "--steps", "1"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  r = subprocess.run(cmd + ["--json", str(out)], cwd=REPO, env=env, capture_output=True, text=True)
  assert r.returncode == 0, r.stderr[-2000:]
  assert "| layer norm |" in r.stdout
  res = json.loads(out.read_text())
  assert [s["side"].split()[0] for s in res["sides"]] == ["ours", "torch"]
  for side in res["sides"]:
    assert side["step_ms"] > 0
    assert abs(sum(p["share"] for p in side["parts"].values()) - 1) < 1e-3
