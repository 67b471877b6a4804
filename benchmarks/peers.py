"""mlsae against its peers, EleutherAI's sparsify and SAELens: one TopK SAE step each, in one run.

Every library gets the same input, the same dead latents and the same steps, and each follows its own
trainer (its initialisation, loss, AuxK, decoder handling, clipping, optimiser, schedule). Printed, with
the ratios to mlsae measured in this run:
  * step time (median of --repeats, the libraries interleaved within each repeat) on one fixed batch,
    the one benchmarks/train_step.py builds (per-layer scales, offset), flattened to rows [n, d];
  * peak step memory, each library's step in a fresh subprocess (common.step_peak_increase);
  * FVU on a held-out batch after --steps steps on one stream of fresh batches (the same batches, from one
    generator seed, for every library), at each library's default lr and schedule and at a shared lr grid.

The inputs are standardised per vector (mlsae.sae.model.standardize) before any library sees them, so all
three train on and are scored on the same numbers; mlsae keeps its own standardisation on (its default,
SAEConfig.standardize; a no-op on standardised vectors). --input raw gives everyone the raw vectors
instead (mlsae then standardises internally, the peers do not). FVU = sum ||x - x_hat||^2 /
sum ||x - mean(x)||^2 over the held-out rows, in the space the libraries were given. The dead latents
(--dead-frac, those train_step.py marks) are written into each library's own dead counter before
every step, so each step runs its AuxK on the same latents; the peers pick k_aux = d_model // 2
themselves (--k-aux sets mlsae's).

Each library's own step, as its trainer runs it:
  mlsae    MLSAE forward (FVU + AuxK/32), backward, project_decoder_grads_, fused Adam (lr 1e-4,
           eps 6.25e-10, constant: TrainConfig's defaults, the paper's; --mlsae-schedule 1e-2/0.05/0.2
           gives it a peak lr with a linear warm-up and decay, TrainConfig.lr_at over the --steps),
           normalize_decoder_; b_pre = geometric median of the first batch.
  sparsify b_dec = mean of the first batch, decoder renormalised before each forward, loss fvu +
           auxk_alpha * auxk, backward, gradient parallel to the decoder rows removed, then its default
           optimiser: schedule-free SignSGD (momentum 0.95, lr 5e-3 / sqrt(n_latents / 2^14), no schedule),
           evaluated in the optimiser's eval mode as its checkpoints are. Its auxk_alpha defaults to 0
           (no AuxK at all); here 1/32 (--sparsify-auxk-alpha) so the dead latents are used.
           --sparsify-optimizer adam: its Adam (lr 2e-4 / sqrt(n_latents / 2^14), linear warm-up of
           1000 steps then linear decay).
  SAELens  TopKTrainingSAE stepped by its own SAETrainer.step: MSE (sum over d, mean over rows) + AuxK
           (coefficient 1), backward, clip_grad_norm_(1.0), Adam (lr 3e-4, betas 0.9/0.999, constant
           schedule); no decoder renormalisation (it rescales activations by the decoder norms).
On CUDA sparsify runs its forward under bf16 autocast (its own decorator); the others stay fp32.

It installs nothing. The peers come from a throwaway environment (CI does not run this script):

    python3.11 -m venv /tmp/peers-venv
    /tmp/peers-venv/bin/pip install torch==2.13.0    # where the CPU wheel is not on pip's find-links, add
                                                     # --extra-index-url https://download.pytorch.org/whl/cpu
    /tmp/peers-venv/bin/pip install --no-deps -r requirements.txt   # the lock; includes sae-lens (interop extra)
    /tmp/peers-venv/bin/pip install --no-deps -e .
    /tmp/peers-venv/bin/pip install -c requirements.txt eai-sparsify==1.3.3   # EleutherAI's; PyPI's "sparsify"
    /tmp/peers-venv/bin/pip check                                             # is an unrelated Neural Magic tool
    cd benchmarks && /tmp/peers-venv/bin/python peers.py [--peers sparsify saelens] [--steps 20] [--lrs ...]

(run from the repository root; the project's own .venv already has sae-lens, the `interop` extra.)
The defaults (pythia-70m's shape: 6,144 rows, d_model 512, 32,768 latents, k 32) are sized to take
roughly 10-15 minutes on 2 CPU cores; lower --steps, --fvu-rows or the --lrs grid if it is slower.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from typing import Protocol

import torch
import torch.nn.functional as F
from common import parse_schedule, step_peak_increase, timed
from torch import Tensor
from train_step import setup, train_step

from mlsae.sae.model import standardize
from mlsae.training.config import TrainConfig

# name -> (module, PyPI distribution, label); the versions this script was written against
PEERS = {"sparsify": ("sparsify", "eai-sparsify", "sparsify"), "saelens": ("sae_lens", "sae-lens", "SAELens")}
PINS = {"sparsify": "eai-sparsify==1.3.3", "saelens": "sae-lens==6.54.12"}
LABELS = {"mlsae": "mlsae", **{name: label for name, (_, _, label) in PEERS.items()}}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peers", nargs="*", choices=list(PEERS), default=list(PEERS), help="peers to compare")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--rows", type=int, default=6 * 1024, help="rows per step-time batch (layers x tokens)")
    p.add_argument("--layers", type=int, default=6, help="mlsae's layers: the largest divisor of the rows up to this")
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--expansion-factor", type=int, default=64)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--k-aux", type=int, default=256, help="mlsae's; the peers use d_model // 2")
    p.add_argument("--dead-frac", type=float, default=0.1, help="fraction of latents marked dead")
    p.add_argument("--repeats", type=int, default=5, help="timed steps per library (median)")
    p.add_argument("--steps", type=int, default=20, help="training steps before the FVU (0: skip the FVU)")
    p.add_argument("--fvu-rows", type=int, default=6 * 256, help="rows per FVU training (and held-out) batch")
    p.add_argument("--lrs", nargs="*", type=float, default=[3e-4, 1e-3, 3e-3, 1e-2], help="shared lr grid")
    p.add_argument("--data", choices=["sparse", "gaussian"], default="sparse",
                   help="FVU stream: sparse = k-sparse combinations of a fixed random dictionary (+10%% noise), "
                        "gaussian = train_step.py's noise")
    p.add_argument("--input", choices=["standardized", "raw"], default="standardized")
    p.add_argument("--mlsae-schedule", metavar="LR/WARMUP/DECAY",
                   help="mlsae's default lr and schedule (peak lr / warm-up / decay fractions, as TrainConfig's "
                        "lr, lr_warmup, lr_decay; e.g. 1e-2/0.05/0.2); its grid rows keep the warm-up and decay. "
                        "Default: TrainConfig's (the paper's constant 1e-4)")
    p.add_argument("--mlsae-encoder-init", choices=["unit", "fit"], default="unit",
                   help="unit: its default (the paper's); fit: the encoder scaled on the first batch (short runs)")
    p.add_argument("--sparsify-optimizer", choices=["signum", "adam"], default="signum", help="signum: its default")
    p.add_argument("--sparsify-auxk-alpha", type=float, default=1 / 32, help="its default is 0 (no AuxK)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    p.add_argument("--measure-memory", choices=["mlsae", *PEERS], help=argparse.SUPPRESS)
    return p.parse_args(argv)


def outside_module(name: str):
    """A module of sparsify's environment (sparsify, schedulefree, bitsandbytes), imported by name: these are
    deliberately not in the project's lock (they come from the throwaway environment in the docstring), so
    they stay out of the declared-imports check of tests/test_packaging.py. SAELens is declared (the
    interop extra) and imported normally."""
    return importlib.import_module(name)


def layers_tokens(rows: int, layers: int) -> tuple[int, int]:
    """mlsae reads [layer, token, d]: the largest layer count up to ``layers`` that divides ``rows``."""
    L = max(n for n in range(1, layers + 1) if rows % n == 0)
    return L, rows // L


def setup_args(args, L: int, T: int) -> argparse.Namespace:
    """The namespace train_step.setup reads."""
    return argparse.Namespace(layers=L, tokens=T, d_model=args.d_model, expansion_factor=args.expansion_factor,
                              k=args.k, k_aux=args.k_aux, dead_frac=args.dead_frac, device=args.device)


def prepare(args, x: Tensor) -> Tensor:
    """[L, T, d] -> the rows [n, d] every library is given."""
    rows = x.reshape(-1, x.shape[-1])
    return standardize(rows)[0] if args.input == "standardized" else rows


def fixed_batch(args) -> tuple[Tensor, Tensor]:
    """train_step.py's batch (as rows) and its dead latents: the step-time input for every library."""
    L, T = layers_tokens(args.rows, args.layers)
    sae, _, x, counters = setup(setup_args(args, L, T), seed=args.seed)
    return prepare(args, x), counters >= sae.cfg.dead_tokens


# --- the libraries, each stepped as its own trainer steps it -------------------------------------


class Peer(Protocol):
    lr: float
    about: str

    def step(self, x: Tensor) -> None: ...

    def reconstruct(self, x: Tensor) -> Tensor: ...


class MLSAEPeer:
    """benchmarks/train_step.py's step; b_pre (and with encoder_init fit the encoder scale) from the first
    batch, as mlsae.training.train does."""

    def __init__(self, args, rows: int, dead: Tensor, lr: float | None, steps: int):
        self.L, self.T = layers_tokens(rows, args.layers)
        self.sae, self.opt, _, _ = setup(setup_args(args, self.L, self.T), seed=args.seed)
        peak, warmup, decay = mlsae_schedule(args.mlsae_schedule)
        # its lr at each step, as mlsae.training.train sets it: TrainConfig.lr_at over a run of ``steps`` steps
        self.schedule = TrainConfig(lr=peak if lr is None else lr, lr_warmup=warmup, lr_decay=decay,
                                    seq_len=self.T, batch_size=1, max_tokens=max(steps, 1) * self.T)
        self.lr = self.schedule.lr
        self.counters = dead.long() * self.sae.cfg.dead_tokens
        self.fit_encoder = args.mlsae_encoder_init == "fit"
        self.steps = 0
        shape = f"warm-up {warmup:g}, decay {decay:g} of the run" if warmup or decay else "constant"
        self.about = (f"Adam lr {self.lr:.2g} (fused, eps 6.25e-10), {shape}, no clipping; "
                      f"encoder_init {args.mlsae_encoder_init}")

    def step(self, x: Tensor) -> None:
        x = x.view(self.L, self.T, -1)
        if self.steps == 0:
            self.sae.init_b_pre_(x)
            if self.fit_encoder:
                self.sae.fit_encoder_scale_(x)
        for group in self.opt.param_groups:
            group["lr"] = self.schedule.lr_at(self.steps)
        train_step(self.sae, self.opt, x, self.counters, "fast", nullcontext)
        self.steps += 1

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        self.sae.eval()
        x_hat = self.sae.reconstruct(x)
        self.sae.train()
        return x_hat


def mlsae_schedule(text: str | None) -> tuple[float, float, float]:
    """--mlsae-schedule as (peak lr, warm-up, decay); None: TrainConfig's defaults."""
    fields = ("lr", "lr_warmup", "lr_decay")
    values = parse_schedule(text) if text is not None else {f: TrainConfig.__dataclass_fields__[f].default for f in fields}
    return tuple(values[f] for f in fields)


class SparsifyPeer:
    """One step of sparsify.Trainer.fit (loss_fn fvu, one hookpoint, no accumulation), its hook and its
    optimiser step written out: the Trainer itself needs a Hugging Face model to hook."""

    def __init__(self, args, rows: int, dead: Tensor, lr: float | None, steps: int):
        sparsify = outside_module("sparsify")
        SparsifyTrainConfig = outside_module("sparsify.config").TrainConfig

        torch.manual_seed(args.seed)
        cfg = sparsify.SparseCoderConfig(expansion_factor=args.expansion_factor, k=args.k)
        self.sae = sparsify.SparseCoder(args.d_model, cfg, args.device, dtype=torch.float32)
        m = self.sae.num_latents
        self.alpha = args.sparsify_auxk_alpha
        self.threshold = SparsifyTrainConfig.__dataclass_fields__["dead_feature_threshold"].default
        self.dead_counts = dead.long() * (self.threshold + 1)  # dead: counter > threshold
        self.counters = self.dead_counts.clone()  # its num_tokens_since_fired
        self.schedulers: list = []
        if args.sparsify_optimizer == "signum":
            ScheduleFreeWrapper = outside_module("schedulefree").ScheduleFreeWrapper
            SignSGD = outside_module("sparsify.sign_sgd").SignSGD
            self.lr = lr or 5e-3 / (m / 2**14) ** 0.5
            self.opt = ScheduleFreeWrapper(SignSGD([dict(params=self.sae.parameters(), lr=self.lr)]), momentum=0.95)
            self.opt.train()
            self.about = f"schedule-free SignSGD lr {self.lr:.2g} (momentum 0.95), no schedule, no clipping"
        else:
            from transformers import get_linear_schedule_with_warmup

            try:  # its trainer's choice: 8-bit Adam where bitsandbytes is installed
                Adam = outside_module("bitsandbytes.optim").Adam8bit
            except ImportError:
                Adam = torch.optim.Adam
            warmup = SparsifyTrainConfig.__dataclass_fields__["lr_warmup_steps"].default
            self.lr = lr or 2e-4 / (m / 2**14) ** 0.5
            self.opt = Adam([dict(params=self.sae.parameters(), lr=self.lr)])
            self.schedulers = [get_linear_schedule_with_warmup(self.opt, warmup, steps)]
            self.about = f"{Adam.__name__} lr {self.lr:.2g}, linear warm-up {warmup} then decay, no clipping"
        self.about += f"; auxk_alpha {self.alpha:.3g}"
        self.steps = 0

    def step(self, x: Tensor) -> None:
        sae = self.sae
        self.counters.copy_(self.dead_counts)  # the same dead set every step
        if self.steps == 0:
            sae.b_dec.data = x.mean(0).to(sae.dtype)
        sae.set_decoder_norm_to_unit_norm()
        dead_mask = self.counters > self.threshold if self.alpha > 0 else None
        total_variance = (x - x.mean(0)).pow(2).sum()
        out = sae(x=x, y=x, dead_mask=dead_mask, total_variance=total_variance)
        did_fire = torch.zeros(sae.num_latents, dtype=torch.bool, device=x.device)
        did_fire[out.latent_indices.flatten()] = True
        (out.fvu + self.alpha * out.auxk_loss + out.multi_topk_fvu / 8).backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        self.opt.step()
        self.opt.zero_grad()
        for scheduler in self.schedulers:
            scheduler.step()
        with torch.no_grad():  # its bookkeeping (tokens since fired)
            self.counters += x.shape[0]
            self.counters[did_fire] = 0
        self.steps += 1

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        swap = hasattr(self.opt, "eval")  # schedule-free: its checkpoints hold the eval-mode weights
        if swap:
            self.opt.eval()
        x_hat = self.sae(x).sae_out
        if swap:
            self.opt.train()
        return x_hat


class SAELensPeer:
    """sae_lens.training.sae_trainer.SAETrainer.step itself (what SAETrainer.fit calls once per batch)."""

    def __init__(self, args, rows: int, dead: Tensor, lr: float | None, steps: int):
        from sae_lens.config import SAETrainerConfig
        from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
        from sae_lens.training.sae_trainer import SAETrainer

        torch.manual_seed(args.seed)
        m = args.d_model * args.expansion_factor
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=args.d_model, d_sae=m, k=args.k, device=args.device))
        self.lr = SAETrainerConfig.__dataclass_fields__["lr"].default if lr is None else lr
        cfg = SAETrainerConfig(total_training_samples=max(steps, 1) * rows, train_batch_size_samples=rows,
                               lr=self.lr, lr_end=self.lr / 10, device=args.device)  # lr_end: its runner's default
        self.trainer = SAETrainer(cfg, sae, data_provider=iter(()))
        self.passes = dead.float() * (cfg.dead_feature_window + 1)  # dead: passes since fired > window
        self.about = (f"Adam lr {self.lr:.2g} (betas {cfg.adam_beta1}/{cfg.adam_beta2}), {cfg.lr_scheduler_name} "
                      "schedule, clip_grad_norm 1.0")

    def step(self, x: Tensor) -> None:
        self.trainer.n_forward_passes_since_fired.copy_(self.passes)
        self.trainer.step(x)
        self.trainer.n_training_steps += 1

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        sae = self.trainer.sae
        sae.eval()
        x_hat = sae(x)
        sae.train()
        return x_hat


BUILDERS = {"mlsae": MLSAEPeer, "sparsify": SparsifyPeer, "saelens": SAELensPeer}


def build(name: str, args, rows: int, dead: Tensor, lr: float | None = None, steps: int = 1) -> Peer:
    return BUILDERS[name](args, rows, dead, lr, steps)


# --- data for the FVU ------------------------------------------------------------------------------


def stream_batch(args, gen: torch.Generator, dictionary: Tensor | None) -> Tensor:
    """One fresh [L, T, d] batch with train_step.py's per-layer scales and offset, drawn on the CPU from
    ``gen`` (so every library and device gets the same numbers), as the rows the libraries are given."""
    L, T = layers_tokens(args.fvu_rows, args.layers)
    n, d = L * T, args.d_model
    if dictionary is None:
        base = torch.randn(n, d, generator=gen)
    else:
        idx = torch.randint(dictionary.shape[0], (n, args.k), generator=gen)
        base = F.embedding_bag(idx, dictionary, per_sample_weights=torch.rand(n, args.k, generator=gen), mode="sum")
        base = base + 0.1 * base.std() * torch.randn(n, d, generator=gen)
    x = base.view(L, T, d) * torch.linspace(1, 4, L)[:, None, None] + 0.5
    return prepare(args, x.to(args.device))


def make_dictionary(args) -> Tensor | None:
    if args.data == "gaussian":
        return None
    gen = torch.Generator().manual_seed(args.seed + 3)
    D = torch.randn(args.d_model * args.expansion_factor, args.d_model, generator=gen)
    return D / torch.linalg.vector_norm(D, dim=1, keepdim=True)


def fvu(x: Tensor, x_hat: Tensor) -> float:
    x, x_hat = x.double(), x_hat.double()
    return float((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def train_and_score(name: str, args, dead: Tensor, lr: float | None, dictionary, held: Tensor) -> tuple[float, str]:
    lib = build(name, args, args.fvu_rows, dead, lr, args.steps)
    gen = torch.Generator().manual_seed(args.seed + 1)  # the same stream for every library and lr
    for _ in range(args.steps):
        lib.step(stream_batch(args, gen, dictionary))
    return fvu(held, lib.reconstruct(held)), lib.about


# --- memory (one fresh subprocess per library) -----------------------------------------------------


def measure_memory(args) -> dict:
    x, dead = fixed_batch(args)
    lib = build(args.measure_memory, args, args.rows, dead)
    lib.step(x)  # warm-up: optimiser state, the first batch's initialisation
    return step_peak_increase(lambda: lib.step(x), args.device)


def memory_in_subprocess(name: str, argv: list[str]) -> dict:
    cmd = [sys.executable, __file__, *argv, "--measure-memory", name]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"memory subprocess for {name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- main ------------------------------------------------------------------------------------------


def check_peers(names: list[str]) -> None:
    """Exit (status 2) naming each selected peer that is not importable, and how to get it."""
    missing = [name for name in names if importlib.util.find_spec(PEERS[name][0]) is None]
    for name in missing:
        module, dist, label = PEERS[name]
        print(f"peers.py: {label} is not installed (import {module}; PyPI: {dist}). Install it into a throwaway "
              f"environment built as this script's docstring says (python peers.py --help), from the repository "
              f"root: pip install -c requirements.txt {PINS[name]}; or leave it out: "
              f"--peers {' '.join(n for n in names if n != name)}", file=sys.stderr)
    if missing:
        raise SystemExit(2)


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def ratio(value: float, base: float) -> str:
    return f"{value / base:8.2f}" if base else "       -"


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.measure_memory:
        print(json.dumps(measure_memory(args)))
        return
    check_peers(args.peers)
    for name in sorted(set(PEERS) - set(args.peers)):
        print(f"skipped: {PEERS[name][2]} (not in --peers)")
    names = ["mlsae", *args.peers]

    L, T = layers_tokens(args.rows, args.layers)
    m = args.d_model * args.expansion_factor
    versions = ", ".join(f"{dist} {version(dist)}" for dist in
                         ["torch", "mlsae", *(PEERS[name][1] for name in args.peers)])
    print(f"shape: {L} layers x {T} tokens = {args.rows} rows, d_model={args.d_model}, n_latents={m}, k={args.k}, "
          f"k_aux={args.k_aux} (peers: d_model // 2 = {args.d_model // 2}), dead={args.dead_frac:.0%}, "
          f"input={args.input}, device={args.device}, threads={torch.get_num_threads()}, "
          f"{datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"versions: {versions}")

    x, dead = fixed_batch(args)
    libs = {name: build(name, args, args.rows, dead, steps=args.repeats + 1) for name in names}
    for lib in libs.values():  # warm-up (and each trainer's first-batch initialisation)
        lib.step(x)
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.repeats):
        for name, lib in libs.items():
            times[name].append(timed(lambda lib=lib: lib.step(x), args.device))
    del libs
    med = {name: statistics.median(ts) for name, ts in times.items()}
    mem = {} if args.no_memory else {name: memory_in_subprocess(name, argv)["peak_increase_mib"] for name in names}

    print(f"\nstep on the fixed batch (median of {args.repeats}"
          + ("" if args.no_memory else "; memory: peak rise over the steady state, fresh subprocess each") + ")")
    print(f"{'library':10s} {'time s':>9s} {'x mlsae':>8s} {'peak MiB':>10s} {'x mlsae':>8s}")
    for name in names:
        row = f"{LABELS[name]:10s} {med[name]:9.3f} {ratio(med[name], med['mlsae'])}"
        if mem:
            row += f" {mem[name]:10.0f} {ratio(mem[name], mem['mlsae'])}"
        print(row)

    if args.steps <= 0:
        return
    dictionary = make_dictionary(args)
    held = stream_batch(args, torch.Generator().manual_seed(args.seed + 2), dictionary)
    results: dict[str | float, dict[str, float]] = {}
    abouts: dict[str, str] = {}
    for lr in [None, *args.lrs]:
        key = "default" if lr is None else lr
        results[key] = {}
        for name in names:
            t0 = time.perf_counter()
            results[key][name], about = train_and_score(name, args, dead, lr, dictionary, held)
            if lr is None:
                abouts[name] = about
            print(f"  [fvu] {LABELS[name]} lr {key}: {results[key][name]:.4f} "
                  f"({time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True)

    Lf, Tf = layers_tokens(args.fvu_rows, args.layers)
    print(f"\nFVU on a held-out batch of {args.fvu_rows} rows after {args.steps} steps of {Lf} x {Tf} = "
          f"{args.fvu_rows} rows (data: {args.data}, the same batches for every library)")
    for name in names:
        print(f"  default {LABELS[name]}: {abouts[name]}")
    header = f"{'lr':>8s} {'mlsae':>8s}" + "".join(f" {LABELS[n]:>9s} {'x mlsae':>8s}" for n in args.peers)
    print(header)
    for key, row in results.items():
        line = f"{key if isinstance(key, str) else f'{key:.0e}':>8s} {row['mlsae']:8.4f}"
        line += "".join(f" {row[n]:9.4f} {ratio(row[n], row['mlsae'])}" for n in args.peers)
        print(line)


if __name__ == "__main__":
    main()
