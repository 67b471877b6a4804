"""Trainer: metrics log, checkpoints, exact resume after a kill, determinism, bad input; evaluation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import write_word_corpus
from mlsae.analysis.metrics import evaluate
from mlsae.models.registry import load_model
from mlsae.sae.config import SAEConfig
from mlsae.sae.model import MLSAE
from mlsae.training.config import TrainConfig, config_from_preset
from mlsae.training.identity import sae_key
from mlsae.training.train import train, train_many


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory) -> Path:
    """A local data set (train/test jsonl) in the tiny tokenizer's vocabulary."""
    return write_word_corpus(tmp_path_factory.mktemp("text"), n_train=400, seed=0)


def _cfg(model_dir, text_dir, **kw) -> TrainConfig:
    base = dict(model=str(model_dir), data=str(text_dir), expansion_factor=4, k=4, k_aux=8, seq_len=16, batch_size=4,
                max_tokens=16 * 4 * 30, lr=3e-3, dead_tokens=500, checkpoint_every=5, log_every=1)
    return config_from_preset("tiny", **{**base, **kw})


def test_training_logs_metrics_lowers_fvu_and_saves(tiny_model_dir, text_dir, tmp_path):
    result = train(_cfg(tiny_model_dir, text_dir), tmp_path / "run", progress=False)
    log = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 31))
    for row in log:
        assert {"loss", "fvu", "fvu_per_layer", "dead_fraction", "tokens"} <= set(row)
        assert len(row["fvu_per_layer"]) == 3
    assert sum(r["fvu"] for r in log[-5:]) < sum(r["fvu"] for r in log[:5])
    sae = MLSAE.from_pretrained(tmp_path / "run" / "sae")
    assert sae.cfg.layers == [0, 1, 2] and sae.cfg.n_latents == 4 * 32
    assert result.steps == 30 and result.tokens > 0


def test_a_trained_sae_says_what_it_was_trained_on_and_evaluates_from_its_folder(tiny_model_dir, text_dir, tmp_path,
                                                                                 capsys):
    from mlsae.cli import main
    from mlsae.data.sources import data_identity
    from mlsae.models.registry import model_identity
    from mlsae.sae.io import read_provenance

    cfg = _cfg(tiny_model_dir, text_dir, max_tokens=16 * 4 * 6)
    train(cfg, tmp_path / "run", progress=False)
    p = read_provenance(tmp_path / "run" / "sae")
    assert p["model"] == cfg.model and p["model_identity"] == model_identity(cfg.model)
    assert p["data_identity"] == data_identity(cfg.data) and p["split"] == "train" and p["preset"] == "tiny"
    assert p["tokens"] > 0 and p["steps"] == 6
    assert p["cache_key"] == sae_key(cfg) and p["train_config"] == cfg.to_dict() and "fvu" in p["metrics"]
    assert p["mlsae_version"] and "git_commit" in p
    card = (tmp_path / "run" / "sae" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: mlsae") and p["model_identity"] in card
    assert "| training | 6 steps, seed 42, 1 process(es) |" in card and p["processes"] == 1
    MLSAE.from_pretrained(tmp_path / "run" / "sae")  # the card and provenance do not disturb loading
    assert main(["eval", str(tmp_path / "run"), "--tokens", "256"]) == 0  # no --model, --data or --seq-len
    rows = [json.loads(l) for l in capsys.readouterr().out.splitlines() if l.startswith("{")]
    assert [r["layer"] for r in rows] == [0, 1, 2, "mean"]


def test_same_seed_same_weights(tiny_model_dir, text_dir, tmp_path):
    a = train(_cfg(tiny_model_dir, text_dir, max_tokens=16 * 4 * 8), tmp_path / "a", progress=False).sae
    b = train(_cfg(tiny_model_dir, text_dir, max_tokens=16 * 4 * 8), tmp_path / "b", progress=False).sae
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


def _cli(model_dir, text_dir, out, steps) -> list[str]:
    return [sys.executable, "-m", "mlsae", "train", "--model", str(model_dir), "--data", str(text_dir),
            "--preset", "tiny", "--expansion-factor", "4", "-k", "4", "--seq-len", "16", "--batch-size", "4",
            "--max-tokens", str(16 * 4 * steps), "--checkpoint-every", "3", "--out", str(out)]


def test_resume_after_kill_gives_the_same_final_weights(tiny_model_dir, text_dir, tmp_path):
    steps = 150
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_cli(tiny_model_dir, text_dir, tmp_path / "full", steps), check=True, env=env, capture_output=True)

    proc = subprocess.Popen(_cli(tiny_model_dir, text_dir, tmp_path / "cut", steps), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "cut" / "checkpoint" / "state.json"
    deadline = time.time() + 120
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert state.exists(), "no checkpoint appeared before the kill"
    killed_at = json.loads(state.read_text())["step"]
    assert killed_at < steps, "the run finished before it could be killed"
    assert not (tmp_path / "cut" / "sae" / "config.json").exists()

    subprocess.run(_cli(tiny_model_dir, text_dir, tmp_path / "cut", steps), check=True, env=env, capture_output=True)
    full = load_file(tmp_path / "full" / "sae" / "model.safetensors")
    resumed = load_file(tmp_path / "cut" / "sae" / "model.safetensors")
    assert full.keys() == resumed.keys()
    for name in full:
        assert torch.equal(full[name], resumed[name]), f"{name} differs after resuming from step {killed_at}"
    rows = [json.loads(l) for l in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == sorted({r["step"] for r in rows}), "log has duplicated steps after resume"


def test_non_finite_activations_stop_with_the_step_and_keep_the_last_checkpoint(tiny_model_dir, text_dir, tmp_path, monkeypatch):
    import mlsae.training.train as train_module

    real = train_module.residual_batches

    def poisoned(model, tokenizer, batches):
        for i, (ids, keep, resid) in enumerate(real(model, tokenizer, batches)):
            if i == 7:
                resid = resid.clone()
                resid[0, 0, 0, 0] = float("nan")
            yield ids, keep, resid

    monkeypatch.setattr(train_module, "residual_batches", poisoned)
    with pytest.raises(FloatingPointError, match="step 7"):
        train(_cfg(tiny_model_dir, text_dir), tmp_path / "run", progress=False)
    state = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 5
    sae = MLSAE.from_pretrained(tmp_path / "run" / "checkpoint" / "sae")
    assert all(torch.isfinite(p).all() for p in sae.parameters())


def test_a_run_that_fails_before_its_first_checkpoint_leaves_no_folder_and_no_lock_beside_it(tiny_model_dir, text_dir,
                                                                                           tmp_path, monkeypatch):
    import mlsae.training.train as train_module

    real = train_module.residual_batches

    def poisoned(model, tokenizer, batches):
        for i, (ids, keep, resid) in enumerate(real(model, tokenizer, batches)):
            if i == 2:  # before the first checkpoint (step 5)
                resid = resid.clone()
                resid[0, 0, 0, 0] = float("nan")
            yield ids, keep, resid

    monkeypatch.setattr(train_module, "residual_batches", poisoned)
    saes = tmp_path / "saes"
    (saes / "kept").mkdir(parents=True)  # a folder that was there before is never removed
    with pytest.raises(FloatingPointError, match="step 2"):
        train(_cfg(tiny_model_dir, text_dir), saes / "run", progress=False)
    with pytest.raises(FloatingPointError, match="step 2"):
        train(_cfg(tiny_model_dir, text_dir), saes / "kept", progress=False)
    assert sorted(p.name for p in saes.iterdir()) == [".locks", "kept"]  # no empty run folder, no run.lock
    assert sorted(p.name for p in (saes / ".locks").iterdir()) == ["kept.lock", "run.lock"]


@pytest.mark.parametrize(
    "change, match",
    [(dict(k=0), "k"), (dict(expansion_factor=0), "expansion_factor"), (dict(k=10_000), "k"),
     (dict(autocast="fp16"), "CUDA"), (dict(layers=[5]), "layers")],
)
def test_bad_configuration_is_a_clear_error(tiny_model_dir, text_dir, tmp_path, change, match):
    with pytest.raises(ValueError, match=match):
        train(_cfg(tiny_model_dir, text_dir, **change), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists(), "a rejected configuration must not leave a run folder behind"


def test_unknown_preset_and_model(tmp_path):
    with pytest.raises(ValueError, match="preset"):
        config_from_preset("huge")
    with pytest.raises(ValueError, match="pythia-70m"):  # the registry lists its names
        train(config_from_preset("tiny", model="not-a-model"), tmp_path / "run", progress=False)


def test_empty_data_set_is_a_clear_error(tiny_model_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "train.jsonl").write_text("")
    (empty / "test.jsonl").write_text("")
    with pytest.raises(ValueError, match="empty"):
        train(_cfg(tiny_model_dir, empty), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_evaluation_per_layer_and_splicing(tiny_model_dir, text_dir, tmp_path):
    from mlsae.data.sources import load_text
    from mlsae.data.tokens import token_batches

    sae = train(_cfg(tiny_model_dir, text_dir), tmp_path / "run", progress=False).sae
    model, tok = load_model(str(tiny_model_dir))
    batches = list(token_batches(load_text(str(text_dir), split="test"), tok, 16, 4, max_tokens=16 * 4 * 3))
    r = evaluate(model, tok, sae, batches, progress=False)
    assert r.layers == [0, 1, 2] and len(r.fvu) == 3 and r.tokens > 0
    assert all(0 < f < 1.5 for f in r.fvu)
    assert all(0 < l0 <= 4 for l0 in r.l0)
    assert all(kl >= 0 for kl in r.kl)
    assert r.clean_ce > 0

    # A perfect "SAE" (identity reconstruction) has zero FVU, Delta CE and KL: splicing is exact.
    class Perfect(torch.nn.Module):
        cfg = sae.cfg

        def forward(self, x):
            out = sae(x)
            out.x_hat = x.clone()
            return out

    p = evaluate(model, tok, Perfect(), batches, progress=False)
    assert max(abs(v) for v in p.fvu) < 1e-6
    assert max(abs(v) for v in p.delta_ce) < 1e-4 and max(p.kl) < 1e-4


def test_checkpoint_for_another_model_width_is_rejected(tiny_model_dir, text_dir, tmp_path):
    from mlsae.analysis.metrics import check_sae_matches_model
    from mlsae.sae.config import SAEConfig

    model, _ = load_model(str(tiny_model_dir))
    wrong = MLSAE(SAEConfig(d_model=48, n_latents=96, k=4))
    with pytest.raises(ValueError, match="d_model"):
        check_sae_matches_model(wrong, model)


def test_many_saes_from_one_model_pass_equal_each_trained_alone(tiny_model_dir, text_dir, tmp_path, monkeypatch):
    """train_many: MLSAE, a single-layer SAE and another R/k on one stream; bit-identical to train()."""
    import mlsae.training.train as train_module

    short = dict(max_tokens=16 * 4 * 12)
    cfgs = [_cfg(tiny_model_dir, text_dir, **short), _cfg(tiny_model_dir, text_dir, layers=[1], **short),
            _cfg(tiny_model_dir, text_dir, expansion_factor=2, k=2, lr=1e-3, **short)]
    alone = [train(c, tmp_path / f"alone{i}", progress=False) for i, c in enumerate(cfgs)]
    passes = []
    real = train_module.residual_batches

    def counting(*args, **kwargs):
        passes.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "residual_batches", counting)
    together = train_many(cfgs, [tmp_path / f"together{i}" for i in range(3)], progress=False)
    assert len(passes) == 1  # one pass of the language model for all three
    for a, b in zip(alone, together, strict=True):
        assert a.steps == b.steps == 12 and a.tokens == b.tokens
        for (name, p), q in zip(a.sae.state_dict().items(), b.sae.state_dict().values(), strict=True):
            assert torch.equal(p, q), name
        assert [m["loss"] for m in a.metrics] == [m["loss"] for m in b.metrics]
    assert together[1].sae.cfg.layers == [1]
    summary = json.loads((tmp_path / "together0" / "train_summary.json").read_text())
    assert summary["wall_seconds"] > 0 and summary["seconds"] > 0


def test_train_many_refuses_configurations_that_do_not_share_a_stream(tiny_model_dir, text_dir, tmp_path):
    cfgs = [_cfg(tiny_model_dir, text_dir), _cfg(tiny_model_dir, text_dir, seq_len=8)]
    with pytest.raises(ValueError, match="seq_len"):
        train_many(cfgs, [tmp_path / "a", tmp_path / "b"], progress=False)
    bad = [_cfg(tiny_model_dir, text_dir), _cfg(tiny_model_dir, text_dir, k=10_000)]
    with pytest.raises(ValueError, match="k"):
        train_many(bad, [tmp_path / "a", tmp_path / "b"], progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_seq_len_beyond_the_models_context_fails_before_any_work(tiny_model_dir, text_dir, tmp_path):
    # the tiny model has 64 positions: a raw IndexError deep in the model, minutes in, is what this replaces
    with pytest.raises(ValueError, match=r"seq_len 128 is longer than .* context of 64 positions.*--seq-len 64"):
        train(_cfg(tiny_model_dir, text_dir, seq_len=128), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_presets_shorten_seq_len_to_the_models_context_and_refuse_an_explicit_longer_one():
    assert config_from_preset("paper", model="gpt2").seq_len == 1024  # GPT-2: 1024 positions
    assert config_from_preset("paper", model="pythia-70m").seq_len == 2048
    assert config_from_preset("paper", model="zoo-gpt2-s").seq_len == 1024
    assert config_from_preset("default", model="zoo-m").seq_len == 128
    with pytest.raises(ValueError, match="seq_len 2048 is longer than gpt2's context of 1024"):  # explicit: refused
        config_from_preset("paper", model="gpt2", seq_len=2048)


@pytest.mark.parametrize("change, match", [
    (dict(lr=float("nan")), "lr must be a positive finite number, got nan"),
    (dict(lr=-1e-3), "lr must be"), (dict(adam_eps=float("inf")), "adam_eps"),
    (dict(layers=[0, 0]), r"layers \[0, 0\] name a layer more than once"),
])
def test_hyper_parameters_are_validated_where_defined(tiny_model_dir, text_dir, change, match):
    with pytest.raises(ValueError, match=match):
        _cfg(tiny_model_dir, text_dir, **change)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error(tiny_model_dir, text_dir):
    with pytest.raises(ValueError, match="no CUDA device is available here; use device 'cpu'"):
        _cfg(tiny_model_dir, text_dir, device="cuda")


def test_non_utf8_data_file_is_named_before_any_file_is_written(tiny_model_dir, tmp_path):
    bad = tmp_path / "latin1"
    bad.mkdir()
    (bad / "train.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1") * 50)
    with pytest.raises(ValueError, match=r"train.txt is not UTF-8 text.*iconv"):
        train(_cfg(tiny_model_dir, bad), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


# ---- resume is safe and explains itself ------------------------------------------------------------


def _interrupted_run(tiny_model_dir, text_dir, out, monkeypatch, stop_at=7, **kw):
    """Train until step ``stop_at`` dies (a checkpoint exists at step 5), as a kill would leave it."""
    import mlsae.training.train as train_module

    real = train_module._Run.end_step

    def dying(self, model_seconds, stream):
        real(self, model_seconds, stream)
        if self.step == stop_at:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module._Run, "end_step", dying)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tiny_model_dir, text_dir, **kw), out, progress=False)
    monkeypatch.setattr(train_module._Run, "end_step", real)
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 5


def test_resume_with_other_hyper_parameters_is_refused_and_changes_nothing(tiny_model_dir, text_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _interrupted_run(tiny_model_dir, text_dir, out, monkeypatch)
    before = (out / "train_config.json").read_text()
    with pytest.raises(ValueError, match=r"cannot resume .* \(lr: checkpoint 0.003, now 0.01\).*--no-resume"):
        train(_cfg(tiny_model_dir, text_dir, lr=1e-2), out, progress=False)
    assert (out / "train_config.json").read_text() == before  # not rewritten with the refused values
    # settings that do not touch the weights may change
    result = train(_cfg(tiny_model_dir, text_dir, log_every=2), out, progress=False)
    assert result.steps == 30


@pytest.mark.parametrize("name", ["sae/model.safetensors", "optimizer.safetensors"])
def test_truncated_checkpoint_file_is_one_clear_error(tiny_model_dir, text_dir, tmp_path, monkeypatch, name):
    out = tmp_path / "run"
    _interrupted_run(tiny_model_dir, text_dir, out, monkeypatch)
    path = out / "checkpoint" / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=rf"cannot be read .*{path.name}|{path.name}: cannot be read") as err:
        train(_cfg(tiny_model_dir, text_dir), out, progress=False)
    assert str(err.value).count("--no-resume") == 1 and str(err.value).endswith("(--out)")  # one fix, said whole


def test_a_torn_last_log_line_is_dropped_on_resume(tiny_model_dir, text_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _interrupted_run(tiny_model_dir, text_dir, out, monkeypatch)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 8, "loss": 0.1')  # what a kill during a log write leaves
    result = train(_cfg(tiny_model_dir, text_dir), out, progress=False)
    log = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 31)) and result.steps == 30


def test_optimizer_state_is_saved_and_loaded_without_pickle(tiny_model_dir, text_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _interrupted_run(tiny_model_dir, text_dir, out, monkeypatch)
    assert (out / "checkpoint" / "optimizer.safetensors").is_file()
    assert not list((out / "checkpoint").rglob("*.pt")) and not list((out / "checkpoint").rglob("*.bin"))
    calls = []
    monkeypatch.setattr(torch, "load", lambda *a, **kw: calls.append(1))
    train(_cfg(tiny_model_dir, text_dir), out, progress=False)
    assert calls == []  # torch.load (pickle) is never called on resume


def test_a_folder_being_trained_by_another_process_is_waited_for(tiny_model_dir, text_dir, tmp_path, monkeypatch,
                                                                capsys):
    import threading

    from filelock import FileLock

    import mlsae.training.store as store
    from mlsae.core.paths import lock_file

    def hold(path: Path, then=None):
        """Another process, played by a thread with its own lock on the same file."""
        held, done = threading.Event(), threading.Event()

        def run():
            with FileLock(str(lock_file(path))):
                held.set()
                if then is not None:
                    time.sleep(0.5)
                    then()
                else:
                    done.wait(30)

        t = threading.Thread(target=run)
        t.start()
        held.wait(10)
        return t, done

    # train() says another process holds the folder and waits for it (as the cache does), then trains
    out = tmp_path / "run"
    t, _ = hold(out, then=lambda: time.sleep(4))  # longer than the checks before the lock
    result = train(_cfg(tiny_model_dir, text_dir, max_tokens=16 * 4 * 4), out, progress=False)
    t.join()
    assert "is being trained by another process" in capsys.readouterr().err and result.steps == 4

    # The cache (train_or_load) waits for the other process too, then uses what it trained.
    monkeypatch.setenv("MLSAE_HOME", str(tmp_path / "home"))
    cfg = _cfg(tiny_model_dir, text_dir, max_tokens=16 * 4 * 4)
    cached = tmp_path / "home" / "saes" / sae_key(cfg)
    cached.parent.mkdir(parents=True)
    trained = []
    monkeypatch.setattr(store, "train", lambda *a, **kw: trained.append(1))
    t, _ = hold(cached, then=lambda: MLSAE(SAEConfig(d_model=32, n_latents=128, k=4, layers=[0, 1, 2])).save_pretrained(cached / "sae"))
    sae, where = store.train_or_load(cfg, progress=False)
    t.join()
    assert where == cached and not trained and sae.cfg.n_latents == 128  # waited, then took the other's SAE


def test_a_preset_means_the_same_in_the_cli_and_the_notebooks():
    from mlsae.core.presets import NOTEBOOK_PRESETS
    from mlsae.studies.experiment import Experiment

    for preset in ("tiny", "default", "paper"):
        cli = config_from_preset(preset, model=NOTEBOOK_PRESETS[preset]["model"])
        nb = Experiment(preset=preset).train_config()
        assert (cli.sae, cli.lens, cli.max_tokens, cli.seq_len) == (nb.sae, nb.lens, nb.max_tokens, nb.seq_len)


class _LensAsked(Exception):
    pass


def test_training_and_evaluation_ask_for_the_same_lens(monkeypatch, tmp_path):
    """The bug this guards: under `tiny` the trainer took a 400k-token lens and the notebooks a
    40k-token one, so the SAE was trained in one basis and evaluated in another."""
    from mlsae.studies.experiment import Experiment

    asked = []

    def recorder(model_name, model, tokenizer, **kwargs):
        kwargs.pop("progress", None)
        asked.append((model_name, kwargs))
        raise _LensAsked

    monkeypatch.setattr("mlsae.training.train.residual_lens_for", recorder)
    monkeypatch.setattr("mlsae.models.lens_training.residual_lens_for", recorder)
    monkeypatch.setattr("mlsae.studies.experiment.residual_lens_for", recorder)
    for seed in (42, 7):
        exp = Experiment(preset="tiny", model="micro-s", tuned_lens=True, seed=seed)
        with pytest.raises(_LensAsked):
            exp.prepare_lens()  # what evaluation, distributions and examples use
        with pytest.raises(_LensAsked):
            train_many([exp.train_config()], [tmp_path / f"run-{seed}"])
        assert asked[-2] == asked[-1], asked[-2:]
        assert asked[-1][1]["train_tokens"] == 40_000 and asked[-1][1]["seed"] == seed
    assert [p.name for p in tmp_path.iterdir()] == [".locks"]  # nothing but the folders' locks before the lens


def test_lens_budget_is_in_the_key_only_where_it_changes_the_sae():
    base = config_from_preset("default", model="zoo-m")
    assert sae_key(base) == sae_key(config_from_preset("default", model="zoo-m", lens_tokens=1_000))  # no lens
    lensed = config_from_preset("default", model="zoo-m", tuned_lens=True)
    assert lensed.lens.lens_tokens == 400_000
    assert sae_key(lensed) != sae_key(config_from_preset("default", model="zoo-m", tuned_lens=True, lens_tokens=1_000))
    with pytest.raises(ValueError, match="lens_tokens"):
        config_from_preset("default", model="zoo-m", lens_tokens=0)


def test_metrics_also_go_to_weights_and_biases_when_asked(tiny_model_dir, text_dir, tmp_path, monkeypatch):
    """tracker='wandb' logs every metrics row (per-layer lists flattened) to one W&B run per SAE and
    finishes it; metrics.jsonl is unchanged, and the cache key and resume ignore the setting."""
    import importlib.util
    import sys
    import types

    runs = []

    class FakeRun:
        def __init__(self, **kw):
            self.init, self.logged, self.finished = kw, [], False
            runs.append(self)

        def log(self, row, step):
            self.logged.append((step, row))

        def finish(self):
            self.finished = True

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=lambda **kw: FakeRun(**kw),
                                                                    __spec__=types.SimpleNamespace()))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: object() if name == "wandb" else real_find_spec(name, *a))
    cfg = _cfg(tiny_model_dir, text_dir, max_tokens=16 * 4 * 6, tracker="wandb")
    assert sae_key(cfg) == sae_key(_cfg(tiny_model_dir, text_dir, max_tokens=16 * 4 * 6))
    train(cfg, tmp_path / "run", progress=False)
    log = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    (run,) = runs
    assert run.finished and run.init["config"]["tracker"] == "wandb" and run.init["name"] == "run"
    assert [s for s, _ in run.logged] == [r["step"] for r in log] == list(range(1, 7))
    assert run.logged[-1][1]["fvu"] == log[-1]["fvu"]
    assert run.logged[-1][1]["fvu_per_layer/2"] == log[-1]["fvu_per_layer"][2]


def test_wandb_tracker_without_wandb_is_a_clear_error(tiny_model_dir, text_dir, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "wandb" else real_find_spec(name, *a))
    with pytest.raises(ValueError, match=r"wandb is not installed.*tracking"):
        _cfg(tiny_model_dir, text_dir, tracker="wandb")
    with pytest.raises(ValueError, match="tracker must be"):
        _cfg(tiny_model_dir, text_dir, tracker="tensorboard")


# ---- O(1) resume and determinism (README *Determinism*) -------------------------------------------


def test_a_resume_starts_from_the_stored_stream_position_with_the_same_final_weights(tiny_model_dir, text_dir,
                                                                                      tmp_path, monkeypatch):
    import mlsae.data.tokens as data

    monkeypatch.setattr(data, "ROWS_PER_CALL", 1)  # count rows one at a time
    rows = []
    real_texts = data._texts

    def counting(chunk, field):
        rows.append(len(chunk))
        return real_texts(chunk, field)

    monkeypatch.setattr(data, "_texts", counting)
    full = train(_cfg(tiny_model_dir, text_dir), tmp_path / "full", progress=False).sae
    full_rows, rows[:] = sum(rows), []
    _interrupted_run(tiny_model_dir, text_dir, tmp_path / "cut", monkeypatch)  # checkpoint at step 5 of 30
    assert (tmp_path / "cut" / "checkpoint" / "stream.safetensors").is_file()
    rows[:] = []
    resumed = train(_cfg(tiny_model_dir, text_dir), tmp_path / "cut", progress=False).sae
    # the resumed run reads the rows of steps 6..30 only (a few rows of slack for the carried tokens)
    assert sum(rows) <= full_rows * 25 / 30 + 2, (sum(rows), full_rows)
    for (name, p), q in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("missing", ["stream.safetensors", "train_config.json", "optimizer.safetensors"])
def test_a_checkpoint_missing_a_file_is_refused_and_left_as_it_is(tiny_model_dir, text_dir, tmp_path, monkeypatch,
                                                                  missing):
    """Checkpoints are written whole (one folder renamed into place); one without a file is not ours to guess
    at (earlier versions' formats are not read): a clear error naming what is missing, nothing rewritten."""
    _interrupted_run(tiny_model_dir, text_dir, tmp_path / "cut", monkeypatch)
    ckpt = tmp_path / "cut" / "checkpoint"
    (ckpt / missing).unlink()
    before = {p.name: p.read_bytes() for p in ckpt.iterdir() if p.is_file()}
    with pytest.raises(ValueError, match=f"not a complete checkpoint.*missing {missing}.*--no-resume"):
        train(_cfg(tiny_model_dir, text_dir), tmp_path / "cut", progress=False)
    assert {p.name: p.read_bytes() for p in ckpt.iterdir() if p.is_file()} == before


def test_the_loss_scaler_state_is_in_the_checkpoint(tiny_model_dir, text_dir, tmp_path):
    """An fp16 run's dynamic loss scale (and its growth tracker) survive a resume."""
    from mlsae.training.checkpoint import load_checkpoint, save_checkpoint

    cfg = _cfg(tiny_model_dir, text_dir)
    sae = MLSAE(SAEConfig(d_model=8, n_latents=16, k=2, layers=[0]))
    opt = torch.optim.Adam(sae.parameters())
    scaler = torch.amp.GradScaler("cpu")
    assert scaler.is_enabled()
    state = {"scale": 512.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000, "_growth_tracker": 7}
    scaler.load_state_dict(state)
    stream = {"batches": 3, "position": 12, "carry": [1, 2, 3]}
    save_checkpoint(tmp_path / "ckpt", sae, opt, scaler, stream, dict(step=3, tokens=9, seconds=0.5), cfg)
    restored = torch.amp.GradScaler("cpu")
    assert restored.state_dict()["scale"] != 512.0
    step, tokens, _, got_stream = load_checkpoint(tmp_path / "ckpt", MLSAE(sae.cfg), torch.optim.Adam(sae.parameters()),
                                                   restored)
    assert restored.state_dict() == state and (step, tokens) == (3, 9) and got_stream == stream


def test_one_seeding_helper_seeds_everything_and_asks_for_determinism_when_told():
    import random

    import numpy as np

    from mlsae.core.seeding import seed_everything

    draws = []
    for _ in range(2):
        seed_everything(7)
        draws.append((random.random(), float(np.random.rand()), float(torch.rand(()))))
    assert draws[0] == draws[1]
    before = torch.are_deterministic_algorithms_enabled()
    try:
        seed_everything(7, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(before)
    assert TrainConfig().deterministic is False
    assert sae_key(config_from_preset("tiny", deterministic=True)) == sae_key(config_from_preset("tiny"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none here)")
def test_on_cuda_two_runs_and_a_resume_agree_within_the_stated_tolerance(tiny_model_dir, text_dir, tmp_path, monkeypatch):
    """README *Determinism*: on CUDA the sparse backward accumulates in any order, so runs agree within 1e-4
    (not bit for bit) unless deterministic=True."""
    a = train(_cfg(tiny_model_dir, text_dir, device="cuda"), tmp_path / "a", progress=False).sae
    b = train(_cfg(tiny_model_dir, text_dir, device="cuda"), tmp_path / "b", progress=False).sae
    _interrupted_run(tiny_model_dir, text_dir, tmp_path / "cut", monkeypatch, device="cuda")
    c = train(_cfg(tiny_model_dir, text_dir, device="cuda"), tmp_path / "cut", progress=False).sae
    for other in (b, c):
        for (name, p), q in zip(a.state_dict().items(), other.state_dict().values(), strict=True):
            if name != "tokens_since_fired":
                assert (p.float() - q.float()).abs().max() <= 1e-4, name


# --- the lr schedule ---------------------------------------------------------------------------------


def test_the_lr_schedule_warms_up_holds_and_decays(tiny_model_dir, text_dir):
    cfg = _cfg(tiny_model_dir, text_dir, lr=1e-2, lr_warmup=0.1, lr_decay=0.2)  # 30 steps: 3 up, 6 down
    lrs = [cfg.lr_at(s) for s in range(cfg.total_steps)]
    assert lrs[:3] == pytest.approx([1e-2 / 3, 2e-2 / 3, 1e-2])
    assert lrs[3:24] == pytest.approx([1e-2] * 21)
    assert lrs[24:] == pytest.approx([1e-2 * (6 - i) / 6 for i in range(6)])
    constant = _cfg(tiny_model_dir, text_dir, lr=1e-2)
    assert {constant.lr_at(s) for s in range(30)} == {1e-2}


@pytest.mark.parametrize("bad", [dict(lr_warmup=-0.1), dict(lr_decay=1.5), dict(lr_warmup=0.6, lr_decay=0.6),
                                 dict(lr_decay=True)])
def test_a_bad_lr_schedule_is_refused_by_name(tiny_model_dir, text_dir, bad):
    with pytest.raises(ValueError, match="lr_warmup|lr_decay"):
        _cfg(tiny_model_dir, text_dir, **bad)


def test_a_constant_lr_keeps_its_cache_key_and_a_schedule_changes_it(tiny_model_dir, text_dir):
    identity = dict(model_identity="m", data_identity="d")
    plain = _cfg(tiny_model_dir, text_dir)
    d = plain.flat()
    assert "lr_warmup" in d and "lr_decay" in d
    explicit = _cfg(tiny_model_dir, text_dir, lr_warmup=0.0, lr_decay=0.0)
    assert plain.cache_key(identity) == explicit.cache_key(identity)
    assert _cfg(tiny_model_dir, text_dir, lr_decay=0.2).cache_key(identity) != plain.cache_key(identity)


def test_a_scheduled_run_is_trained_at_its_lrs_and_resumes_to_the_same_weights(tiny_model_dir, text_dir, tmp_path,
                                                                                 monkeypatch):
    sched = dict(lr=1e-2, lr_warmup=0.2, lr_decay=0.5)
    seen: list[float] = []
    real_step = torch.optim.Adam.step

    def recording(self, *a, **kw):
        seen.append(self.param_groups[0]["lr"])
        return real_step(self, *a, **kw)

    monkeypatch.setattr(torch.optim.Adam, "step", recording)
    full = train(_cfg(tiny_model_dir, text_dir, **sched), tmp_path / "full", progress=False).sae
    cfg = _cfg(tiny_model_dir, text_dir, **sched)
    assert seen == pytest.approx([cfg.lr_at(s) for s in range(cfg.total_steps)])
    monkeypatch.setattr(torch.optim.Adam, "step", real_step)
    _interrupted_run(tiny_model_dir, text_dir, tmp_path / "cut", monkeypatch, **sched)  # dies in the warm-up
    resumed = train(_cfg(tiny_model_dir, text_dir, **sched), tmp_path / "cut", progress=False).sae
    for (name, p), q in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
