"""Data-parallel training on torch.distributed (gloo, 2 processes on this CPU): the same weights as one
process, and a killed rank stops every rank cleanly and resumes to the same weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from conftest import write_word_corpus
from mlsae.training import distributed
from mlsae.training.config import config_from_preset
from mlsae.training.train import train, train_parallel

STEPS = 300
# 1 vs 2 processes differ only in the order of float sums (gradients summed over ranks, the batch variance
# from per-rank sums); measured: at most 3.3e-7 after 300 steps. Same world size: bit for bit.
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory) -> Path:
    return write_word_corpus(tmp_path_factory.mktemp("text"), n_train=1500, seed=1)


def _overrides(model_dir, text_dir) -> dict:
    return dict(model=str(model_dir), data=str(text_dir), expansion_factor=4, k=4, k_aux=8, dead_tokens=500, lr=3e-3,
                seq_len=16, batch_size=4, max_tokens=16 * 4 * STEPS, checkpoint_every=5, log_every=1)


def _cli(model_dir, text_dir, out: Path) -> list[str]:
    flags = []
    for name, value in _overrides(model_dir, text_dir).items():
        flags += [f"--{name.replace('_', '-')}", str(value)]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "mlsae", "train", "--preset", "tiny", *flags, "--out", str(out)]


def _env() -> dict:
    return {**os.environ, "MLSAE_PROGRESS": "0", "OMP_NUM_THREADS": "1"}


def _weights(run: Path) -> dict:
    return load_file(run / "sae" / "model.safetensors")


@pytest.fixture(scope="module")
def runs(tiny_model_dir, text_dir, tmp_path_factory) -> dict[str, Path]:
    """The same SAE trained in one process (in this one) and in two (launched from Python)."""
    root = tmp_path_factory.mktemp("runs")
    cfg = config_from_preset("tiny", **_overrides(tiny_model_dir, text_dir))
    train(cfg, root / "one", progress=False)
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # as torchrun sets it; two processes on two cores
    try:
        train_parallel(cfg, nproc_per_node=2, out_dir=root / "two")
    finally:
        os.environ.pop("OMP_NUM_THREADS") if old is None else os.environ.__setitem__("OMP_NUM_THREADS", old)
    return {"one": root / "one", "two": root / "two", "root": root}


def test_two_processes_give_the_weights_of_one_with_the_same_global_batch(runs):
    one, two = _weights(runs["one"]), _weights(runs["two"])
    assert one.keys() == two.keys()
    assert torch.equal(one["tokens_since_fired"], two["tokens_since_fired"])  # dead-latent counters agree exactly
    for name in ("W_enc", "W_dec", "b_pre"):
        diff = (one[name] - two[name]).abs().max().item()
        assert diff <= TOLERANCE, f"{name}: 1 vs 2 processes differ by {diff:.2e} after {STEPS} steps"
    summary = json.loads((runs["two"] / "train_summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == STEPS
    assert json.loads((runs["two"] / "sae" / "provenance.json").read_text())["processes"] == 2
    log_one = [json.loads(l) for l in (runs["one"] / "metrics.jsonl").read_text().splitlines()]
    log_two = [json.loads(l) for l in (runs["two"] / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log_two] == list(range(1, STEPS + 1))  # one log, written once (rank 0)
    assert [r["tokens"] for r in log_two] == [r["tokens"] for r in log_one]  # the global token count
    assert abs(log_two[0]["loss"] - log_one[0]["loss"]) < 1e-5  # the global batch's loss, not a rank's share


def test_a_killed_rank_stops_every_rank_and_the_resumed_run_ends_with_the_same_weights(tiny_model_dir, text_dir, runs):
    out = runs["root"] / "cut"
    log = runs["root"] / "cut.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen(_cli(tiny_model_dir, text_dir, out), env=_env(), stdout=sink, stderr=subprocess.STDOUT)
        state = out / "checkpoint" / "state.json"
        deadline = time.time() + 120
        while not state.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        ranks = {p.environ().get("RANK"): p for p in psutil.Process(proc.pid).children(recursive=True)
                 if "RANK" in _safe_environ(p)}
        assert set(ranks) == {"0", "1"} and proc.poll() is None, f"both ranks must be running: {log.read_text()[-2000:]}"
        killed = time.time()
        ranks["1"].send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        stopped = time.time() - killed
    text = log.read_text()
    assert proc.returncode != 0
    assert stopped < 15, f"the launcher took {stopped:.1f} s to stop the other rank"
    assert not ranks["0"].is_running() or ranks["0"].status() == psutil.STATUS_ZOMBIE
    assert "rerun the same command to resume" in text, text[-3000:]  # rank 0's own message
    assert "exitcode" in text and "Signal 9" in text, text[-3000:]  # the launcher names the killed rank
    killed_at = json.loads(state.read_text())["step"]
    assert 0 < killed_at < STEPS
    assert not (out / "sae").exists()  # no final SAE from a run that did not finish
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert not leftovers, f"temporary files left behind: {leftovers}"

    subprocess.run(_cli(tiny_model_dir, text_dir, out), env=_env(), check=True, capture_output=True)
    resumed, uninterrupted = _weights(out), _weights(runs["two"])
    for name in uninterrupted:
        assert torch.equal(resumed[name], uninterrupted[name]), f"{name} differs after resuming from step {killed_at}"
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))


def _safe_environ(p: psutil.Process) -> dict:
    try:
        return p.environ()
    except (psutil.AccessDenied, psutil.NoSuchProcess):
        return {}


def test_a_batch_that_does_not_split_over_the_processes_is_refused(tiny_model_dir, text_dir, tmp_path):
    cfg = config_from_preset("tiny", **{**_overrides(tiny_model_dir, text_dir), "batch_size": 3, "max_tokens": 16 * 3 * 4})
    with pytest.raises(ValueError, match="batch_size 3 does not split evenly over 2 processes; use a multiple of 2"):
        train_parallel(cfg, nproc_per_node=2, out_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_the_backend_follows_the_device():
    assert distributed.backend_for("cpu") == "gloo"
    assert distributed.backend_for("cuda") == distributed.backend_for("cuda:1") == "nccl"
    assert not distributed.Group().active and distributed.Group().main
    batch = torch.arange(8).view(4, 2)
    assert torch.equal(distributed.Group(1, 2).shard(batch), batch[2:])
    assert torch.equal(distributed.Group().shard(batch), batch)
