"""torchrun with 2 CPU processes (gloo) trains the same weights as 1 process."""
import json
import os
import subprocess
import sys

import pytest
import torch

from fgnb.checkpoints import load_checkpoint

OPTS = ["--model", "vit_tiny_patch16_224", "--weights", "none",
        "--synthetic-classes", "3", "--synthetic-train-per-class", "8", "--synthetic-test-per-class", "4",
        "--img-size", "16", "--patch-size", "8", "--depth", "3", "--embed-dim", "48", "--num-heads", "3",
        "--batch-size", "6", "--epochs", "2", "--warmup-epochs", "0.5", "--progress", "false", "--val-fraction", "0.25"]


def run(args, env, nproc=None):
    cmd = [sys.executable, "-m", "fgnb", "train", *args]
    if nproc:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
               str(29500 + os.getpid() % 1000), "-m", "fgnb", "train", *args]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


@pytest.mark.parametrize("strategy,extra", [("progressive", ["--crop", "true"]), ("summed", []), ("last", [])])
def test_two_processes_equal_one(tmp_path, strategy, extra):
    env = dict(os.environ, FGNB_DATA=str(tmp_path / "data"), OMP_NUM_THREADS="1")
    args = [*OPTS, "--strategy", strategy, *extra]
    run([*args, "--out", str(tmp_path / "one")], env)
    p = run([*args, "--out", str(tmp_path / "two")], env, nproc=2)
    a = load_checkpoint(tmp_path / "one" / "last.pt")
    b = load_checkpoint(tmp_path / "two" / "last.pt")
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], atol=1e-4, rtol=1e-4, msg=k)
    # evaluation gathered over ranks counts every test image once
    ta = json.loads((tmp_path / "one" / "test_metrics.json").read_text())
    tb = json.loads((tmp_path / "two" / "test_metrics.json").read_text())
    assert ta["n"] == tb["n"] == 12
    assert ta["top1_last"] == pytest.approx(tb["top1_last"])
    # only rank 0 printed the final metrics
    assert p.stdout.count('"top1_last"') == 1


def test_batch_must_split_over_processes(tmp_path):
    from fgnb.config import ConfigError
    from fgnb.loaders import EpochBatchSampler

    with pytest.raises(ConfigError, match="divisible by the number of processes"):
        EpochBatchSampler(100, 7, 0, rank=0, world=2)
    shards = [list(EpochBatchSampler(20, 4, 0, rank=r, world=2)) for r in range(2)]
    single = list(EpochBatchSampler(20, 4, 0))
    assert [sorted(a + b) for a, b in zip(*shards)] == [sorted(s) for s in single]
