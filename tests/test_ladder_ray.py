"""eval.ladder --executor ray on a real local Ray cluster (a head and a worker node on
127.0.0.1): a worker killed mid-point, bad addresses, resources and workdirs."""

import csv
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import pytest

ray = pytest.importorskip("ray")

from configs import ladder as ladder_cfg  # noqa: E402
from eval import ladder  # noqa: E402
from train import cpu_devices  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
NODE = dict(num_cpus=1, object_store_memory=80 * 2**20, node_ip_address="127.0.0.1")


def _node_processes(cluster) -> list:
  return [
      info.process
      for node in [cluster.head_node, *cluster.worker_nodes]
      for infos in node.all_processes.values()
      for info in infos
  ]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
  """Head + one worker node, one CPU each; shut down (every process gone) afterwards."""
  from ray.cluster_utils import Cluster  # noqa: PLC0415 (`ray` extra)

  env = pytest.MonkeyPatch()
  env.delenv("XLA_FLAGS", raising=False)  # the split `python -m train` would choose
  env.delenv(cpu_devices.ENV, raising=False)
  env.setenv("JAX_COMPILATION_CACHE_DIR", os.fspath(tmp_path_factory.mktemp("jax_cache")))
  env.setenv("RAY_USAGE_STATS_ENABLED", "0")
  # Ray maps 127.0.0.1 to the machine's network address unless told this is a one-machine
  # cluster (the setting is read by this process's ray.init and by every node process).
  env.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
  constants = ray._private.ray_constants  # pylint: disable=protected-access
  env.setattr(constants, "ENABLE_RAY_CLUSTER", False)
  c = Cluster(initialize_head=True, head_node_args=dict(NODE, include_dashboard=False))
  c.add_node(**NODE)
  c.wait_for_nodes()
  assert c.address.startswith("127.0.0.1:")
  processes, address = _node_processes(c), c.address
  yield c
  c.shutdown()
  env.undo()
  assert processes and all(p.wait(timeout=30) is not None for p in processes)
  with pytest.raises(ConnectionError, match="no Ray head answers"):
    ladder.check_address(address)


def _rows(d: pathlib.Path) -> dict[str, dict]:
  with open(d / "results.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert len({r["name"] for r in rows}) == len(rows)  # one row per point
  timed = ("wall_s", "chip_hours", "kwh", "usd", "kgco2e")  # wall time, the cost made of it
  return {r["name"]: {k: v for k, v in r.items() if k not in timed} for r in rows}


def _attempts(d: pathlib.Path, name: str) -> list[dict]:
  path = d / "points" / name / "attempts.jsonl"
  return [json.loads(line) for line in path.read_text().splitlines()]


def _kill_when_told(pid_file: pathlib.Path, stop: threading.Event, killed: list) -> None:
  """SIGKILLs the Ray worker that wrote its pid to `pid_file` (from outside, like an OOM
  killer or a lost VM would)."""
  while not stop.is_set():
    if pid_file.exists() and pid_file.read_text():
      pid = int(pid_file.read_text())
      cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
      killed.append((pid, cmdline.split(b"\0")[0].decode()))
      os.kill(pid, signal.SIGKILL)
      return
    time.sleep(0.05)


def _pause_after_save(pid_file: str, point_name: str, step: int):
  """Hooks for the Ray tasks: the point `point_name` waits (to be killed) right after its
  checkpoint at `step` is written, on its first attempt only."""

  def hooks(point):
    if point.name != point_name:
      return None
    from train import trainer  # noqa: PLC0415 (jax after the worker's XLA_FLAGS)

    def after_save(s):
      if s == step and not os.path.exists(pid_file):
        with open(pid_file, "w") as f:
          f.write(str(os.getpid()))
        time.sleep(300)

    return trainer.Hooks(after_save=after_save)

  return hooks


def _local_cli(workdir: pathlib.Path) -> subprocess.Popen:
  return subprocess.Popen(
      [
          sys.executable,
          "-m",
          "eval.ladder",
          "--config",
          "configs/ladder.py:tiny",
          "--workdir",
          os.fspath(workdir),
          "--executor",
          "local",
      ],
      cwd=REPO,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
  )


@pytest.mark.slow
def test_tiny_ladder_on_ray_survives_a_killed_worker(cluster, tmp_path):
  """Every point finishes exactly once; results.csv equals --executor local's, losses bitwise."""
  local = _local_cli(tmp_path / "local")
  out, _ = local.communicate(timeout=900)
  assert local.returncode == 0, out[-3000:]
  pid_file = tmp_path / "killed.pid"
  stop, killed = threading.Event(), []
  killer = threading.Thread(target=_kill_when_told, args=(pid_file, stop, killed), daemon=True)
  killer.start()
  lines = []
  try:
    rows = ladder.run_ladder_ray(
        ladder_cfg.get_config("tiny"),
        tmp_path / "ray",
        address=cluster.address,
        log=lines.append,
        hooks=_pause_after_save(os.fspath(pid_file), "d32l1_constant", 8),
    )
  finally:
    stop.set()
  assert len(killed) == 1 and killed[0][1].startswith("ray::"), killed  # a Ray worker
  assert sorted(r["name"] for r in rows) == ["d16l1_s10", "d16l1_s20", "d32l1_s10", "d32l1_s20"]
  assert _rows(tmp_path / "ray") == _rows(tmp_path / "local")
  assert sum("done:" in line and "ETA" in line for line in lines) == 6
  for name in (
      "d16l1_constant",
      "d16l1_s10",
      "d16l1_s20",
      "d32l1_constant",
      "d32l1_s10",
      "d32l1_s20",
  ):
    ray_attempts = _attempts(tmp_path / "ray", name)
    ends = [a for a in ray_attempts if a["event"] == "end"]
    assert len(ends) == 1, (name, ray_attempts)  # finished exactly once
    starts = [a["pid"] for a in ray_attempts if a["event"] == "start"]
    assert starts == (
        [killed[0][0], ends[0]["pid"]] if name == "d32l1_constant" else [ends[0]["pid"]]
    )
    # The devices `python -m train` would split this CPU into, in both executors.
    local_end = [a for a in _attempts(tmp_path / "local", name) if a["event"] == "end"][0]
    point = next(p for p in ladder.expand(ladder_cfg.get_config("tiny")) if p.name == name)
    assert ends[0]["devices"] == local_end["devices"] == cpu_devices.choose(point.config)
  metrics = (tmp_path / "ray" / "points" / "d32l1_constant" / "metrics.jsonl").read_text()
  resumes = [e["step"] for e in map(json.loads, metrics.splitlines()) if e.get("event") == "resume"]
  assert resumes == [8]  # the retry resumed from the checkpoint written before the kill
  # A rerun finds nothing to do.
  assert (
      ladder.run_ladder_ray(
          ladder_cfg.get_config("tiny"), tmp_path / "ray", address=cluster.address
      )
      == []
  )


def _raise_in(point_name: str):
  """Hooks for the Ray tasks: `point_name` raises at its first save."""

  def hooks(point):
    if point.name != point_name:
      return None
    from train import trainer  # noqa: PLC0415 (jax after the worker's XLA_FLAGS)

    def after_save(step):
      raise RuntimeError(f"disk full at step {step}")

    return trainer.Hooks(after_save=after_save)

  return hooks


@pytest.mark.slow
def test_a_failing_point_is_named_and_the_others_finish(cluster, tmp_path):
  cfg = ladder_cfg.get_config("tiny_grid")
  cfg.ladder.steps = (4,)
  with pytest.raises(
      ladder.PointsFailed,
      match=r"^1 point\(s\) failed \(d16l1_s4: "
      r"RuntimeError: disk full at step 4\); rerun the same command",
  ):
    ladder.run_ladder_ray(cfg, tmp_path, address=cluster.address, hooks=_raise_in("d16l1_s4"))
  assert list(_rows(tmp_path)) == ["d32l1_s4"]  # the other point finished and was recorded


def test_resources_no_node_offers_stop_with_a_message(cluster, tmp_path):
  cfg = ladder_cfg.get_config("tiny")
  cfg.ladder.resources = {"CPU": 1, "TPU": 4}
  cfg.ladder.schedule_timeout_s = 1.0
  t0 = time.time()
  with pytest.raises(ValueError, match=r"no node has \{'TPU': 4\.0\}.*waited 1s"):
    ladder.run_ladder_ray(cfg, tmp_path, address=cluster.address)
  assert time.time() - t0 < 60
  assert not ray.is_initialized()


def test_workdir_workers_cannot_see_is_named(cluster, tmp_path):
  runtime_env = ladder._runtime_env()  # pylint: disable=protected-access
  ray.init(address=cluster.address, runtime_env=runtime_env)
  try:
    nodes = ladder.wait_for_resources(ray, ladder.ray_options({"CPU": 1}), 5)
    assert len(nodes) == 2
    ladder.check_workdir(ray, tmp_path, nodes, 60)  # a local disk is shared on one machine
    # A node on another machine would not find the token the driver wrote:
    (tmp_path / ".ladder-probe").write_text("written by another driver")
    with pytest.raises(ValueError, match=r"not visible from the Ray node\(s\) 127\.0\.0\.1"):
      ladder.probe_workdir(ray, tmp_path, nodes, "the driver's token", 60)
  finally:
    ray.shutdown()


def test_cli_unreachable_address_is_one_line(tmp_path):
  proc = subprocess.run(
      [
          sys.executable,
          "-m",
          "eval.ladder",
          "--config",
          "configs/ladder.py:tiny",
          "--workdir",
          os.fspath(tmp_path),
          "--executor",
          "ray",
          "--ray-address",
          "127.0.0.1:9",
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines() == [
      "error: --ray-address=127.0.0.1:9: no Ray head answers there (Connection refused); start "
      "one with `ray start --head --port=9` on 127.0.0.1, or fix the address"
  ]


def test_ray_options_map_resources():
  assert ladder.ray_options({"CPU": 2}) == {"num_cpus": 2.0, "num_gpus": 0.0}
  assert ladder.ray_options({"TPU": 4, "TPU-v6e-8-head": 1}) == {
      "num_cpus": 0.0,
      "num_gpus": 0.0,
      "resources": {"TPU": 4.0, "TPU-v6e-8-head": 1.0},
  }
  for bad in ({}, {"GPU": -1}, {"CPU": 0}):
    with pytest.raises(ValueError, match="ladder.resources"):
      ladder.ray_options(bad)
