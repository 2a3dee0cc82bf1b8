"""Workdirs on object storage (train/paths.py): a training run, its resume, a ladder and its
report against a fake gs:// bucket (tests/fake_gcs.py: fsspec for epath, the GCS JSON API for
Orbax's TensorStore), with nothing written to local disk outside the cache directory."""

import json
import math
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest
import fsspec
import fake_gcs

from train import paths

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def fake_bucket():

  registry = sys.modules["fsspec.registry"]._registry  # pylint: disable=protected-access
  saved = {k: registry.get(k) for k in ("gs", "gcs")}
  fsspec.register_implementation("gs", fake_gcs.FakeGCSFileSystem, clobber=True)
  fsspec.register_implementation("gcs", fake_gcs.FakeGCSFileSystem, clobber=True)
  fake_gcs.FakeGCSFileSystem.store.clear()
  yield fake_gcs
  fake_gcs.FakeGCSFileSystem.store.clear()
  for k, v in saved.items():
    if v is None:
      registry.pop(k, None)
    else:
      fsspec.register_implementation(k, v, clobber=True)


def test_append_atomic_write_copy_and_lock_on_a_bucket(fake_bucket, tmp_path, monkeypatch):
  monkeypatch.setenv("UNLEASH_CACHE_DIR", str(tmp_path / "cache"))
  run = "gs://fake-bucket/run"
  assert paths.is_remote(run) and os.fspath(paths.path(run)) == run
  assert os.fspath(paths.path("runs/x")) == os.path.abspath("runs/x")
  log = paths.AppendFile(f"{run}/metrics.jsonl", every_s=3600)
  log.write("a\n")
  log.flush(force=True)
  log.write("b\n")
  log.flush()  # within every_s: not uploaded yet
  assert paths.path(f"{run}/metrics.jsonl").read_text() == "a\n"
  log.close()
  paths.append_text(f"{run}/metrics.jsonl", "c\n")  # a resumed run appends after it
  assert paths.path(f"{run}/metrics.jsonl").read_text() == "a\nb\nc\n"
  paths.write_text_atomic(f"{run}/results.csv", "name\nx\n")
  assert fake_bucket.objects()[f"{run}/results.csv"] == len("name\nx\n")

  local = tmp_path / "prepared"
  (local / "shards").mkdir(parents=True)
  (local / "shards" / "0.bin").write_bytes(b"12345")
  (local / "shards" / "1.bin.tmp").write_bytes(b"unfinished")
  (local / "manifest.json").write_text("{}")
  copied = paths.copy_tree(local, f"{run}/data", last=("manifest.json",))
  assert copied == ["shards/0.bin", "manifest.json"]  # the manifest last, no temporary file
  assert paths.copy_tree(local, f"{run}/data", last=("manifest.json",)) == []
  (local / "manifest.json").write_text("[]")  # same size, new content: copied again
  assert paths.copy_tree(local, f"{run}/data", last=("manifest.json",)) == ["manifest.json"]
  mirror = paths.local_mirror(f"{run}/data")
  assert mirror == tmp_path / "cache" / "remote" / "gs" / "fake-bucket" / "run" / "data"
  paths.copy_tree(f"{run}/data", mirror)
  assert (mirror / "shards" / "0.bin").read_bytes() == b"12345"
  assert paths.files(f"{run}/data") == {"shards/0.bin": 5, "manifest.json": 2}
  with pytest.raises(FileNotFoundError):
    paths.files(f"{run}/nothing")
  with paths.locked(f"{run}/results.csv"):
    assert list((tmp_path / "cache" / "locks").glob("*.lock"))


SCRIPT = textwrap.dedent("""
    import json, math, sys

    def main():
      import fake_gcs
      fake_gcs.install()
      from configs import ladder as ladder_cfg
      from eval import ladder, report
      from train import trainer

      cfg = ladder_cfg.get_config("tiny")
      with cfg.unlocked():
        del cfg["ladder"]
      # The ladder's d16l1 shape: the bucket holds the same files whatever the model's size.
      cfg.model.update(
          d_model=16, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=8, mlp_dim=64
      )
      cfg.train.steps = 4
      first = trainer.train_and_evaluate(cfg, "gs://fake-bucket/run")
      cfg.train.steps = 6
      resumed = trainer.train_and_evaluate(cfg, "gs://fake-bucket/run")

      lad = ladder_cfg.get_config("tiny")
      lad.ladder.sizes = lad.ladder.sizes[:1]
      lad.ladder.steps = (5, 10)
      rows = ladder.run_ladder(lad, "gs://fake-bucket/ladder")
      again = ladder.run_ladder(lad, "gs://fake-bucket/ladder")
      md = report.make_report("gs://fake-bucket/ladder", bootstrap=0, grid="quick")
      json.dump(dict(
          first=first["step"], resumed=resumed["step"], val_loss=resumed["val_loss"],
          rows=[r["name"] for r in rows], again=len(again), report=str(md),
          objects=fake_gcs.objects(),
      ), sys.stdout)

    if __name__ == "__main__":
      main()
    """)


@pytest.mark.slow
def test_train_resume_ladder_and_report_on_a_bucket_write_nothing_local(tmp_path):
  cwd, home, tmp = tmp_path / "cwd", tmp_path / "home", tmp_path / "tmp"
  for d in (cwd, home, tmp):
    d.mkdir()
  script = tmp_path / "remote_run.py"
  script.write_text(SCRIPT)
  env = dict(
      os.environ,
      HOME=str(home),
      TMPDIR=str(tmp),
      MPLCONFIGDIR=str(home / ".cache" / "matplotlib"),
      PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]),
      JAX_PLATFORMS="cpu",
  )
  env.pop("UNLEASH_CACHE_DIR", None)
  proc = subprocess.run(
      [sys.executable, str(script)], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  objects = out["objects"]

  # The run: checkpoints (TensorStore arrays and Orbax metadata), integrity records, metrics,
  # TensorBoard events, plot and prepared data all live in the bucket; the resume read them.
  assert (out["first"], out["resumed"]) == (4, 6) and math.isfinite(out["val_loss"])
  run = "gs://fake-bucket/run"
  for name in ("metrics.jsonl", "loss.png", "checkpoints/6/integrity.json"):
    assert f"{run}/{name}" in objects, name
  assert any(k.startswith(f"{run}/checkpoints/6/state/") for k in objects)
  assert any(k.startswith(f"{run}/tensorboard/events.out.tfevents") for k in objects)
  assert any(k.startswith(f"{run}/data/prepared-") and k.endswith("manifest.json") for k in objects)
  # The ladder: WSD cooldowns branched from the constant run inside the bucket, one row each,
  # nothing rerun the second time; the report written next to results.csv.
  assert out["rows"] == ["d16l1_s5", "d16l1_s10"] and out["again"] == 0
  lad = "gs://fake-bucket/ladder"
  for name in ("results.csv", "report/report.md", "report/loss_vs_compute.png"):
    assert f"{lad}/{name}" in objects, name
  assert out["report"] == f"{lad}/report/report.md"
  assert f"{lad}/points/d16l1_constant/attempts.jsonl" in objects
  assert any(k.startswith(f"{lad}/points/d16l1_s10/checkpoints/8/state/") for k in objects)

  # Nothing local but the cache: the working directory and TMPDIR stay empty, and HOME holds
  # only ~/.cache (unleash's mirrors of the bucket's shards and event files and the lock of
  # results.csv; matplotlib's font cache).
  assert not list(cwd.iterdir()) and not list(tmp.iterdir())
  assert [p.name for p in home.iterdir()] == [".cache"]
  assert {p.name for p in (home / ".cache").iterdir()} <= {"unleash", "matplotlib"}
  assert {p.name for p in (home / ".cache" / "unleash").iterdir()} == {"remote", "locks"}
