"""Command line: ``python -m mlsae {train,eval,zoo}``.

Examples::

    python -m mlsae zoo                                   # build the offline model zoo
    python -m mlsae train --model zoo-m --preset default  # MLSAE on an offline zoo model
    python -m mlsae train --model pythia-70m --expansion-factor 64 -k 32 --tuned-lens
    python -m mlsae eval --sae ~/.cache/mlsae/saes/<run>/sae --model zoo-m --tokens 50000
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _layers(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--layers takes comma-separated integers like 0,3; got {text!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mlsae", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train an MLSAE (or a single-layer SAE with --layers)")
    t.add_argument("--model", required=True, help="registry name (pythia-70m, zoo-m, ...), HF id or local path")
    t.add_argument("--preset", default=None, help="paper | default | tiny (default: 'paper' for hub models, 'default' for the zoo)")
    t.add_argument("--expansion-factor", type=int, default=None)
    t.add_argument("-k", type=int, default=None)
    t.add_argument("--tuned-lens", action="store_true")
    t.add_argument("--layers", type=_layers, default=None, help="e.g. 3 for a single-layer SAE on layer 3")
    t.add_argument("--data", default=None, help="'offline', a local folder/file, or a HF data set name")
    t.add_argument("--max-tokens", type=int, default=None)
    t.add_argument("--seq-len", type=int, default=None)
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--grad-accum", type=int, default=None)
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--seed", type=int, default=None)
    t.add_argument("--device", default=None)
    t.add_argument("--autocast", choices=["fp32", "bf16", "fp16"], default=None)
    t.add_argument("--checkpoint-every", type=int, default=None)
    t.add_argument("--out", type=Path, default=None, help="output folder (default: the shared cache)")
    t.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint in --out")

    e = sub.add_parser("eval", help="evaluate a saved SAE on held-out text")
    e.add_argument("--sae", type=Path, required=True, help="folder written by save_pretrained")
    e.add_argument("--model", required=True)
    e.add_argument("--data", default="offline")
    e.add_argument("--tokens", type=int, default=50_000)
    e.add_argument("--seq-len", type=int, default=128)
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--tuned-lens", action="store_true")
    e.add_argument("--device", default="cpu")

    z = sub.add_parser("zoo", help="build the offline model zoo and print its report")
    z.add_argument("names", nargs="*", help="zoo models to build (default: the whole default zoo)")

    f = sub.add_parser("figures", help="run every numbered notebook in order with papermill")
    f.add_argument("--preset", default="default", help="notebook preset: default | tiny | paper")
    f.add_argument("--only", nargs="*", default=None, help="notebook number prefixes, e.g. 01 03")
    f.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="extra papermill parameter for every notebook (value parsed as JSON when possible)")

    args = parser.parse_args(argv)
    commands = {"train": _train, "eval": _eval, "figures": _figures, "zoo": _zoo}
    try:
        return commands[args.command](args)
    except (ValueError, TypeError, OSError, RuntimeError, ConnectionError, FloatingPointError) as err:
        # Expected failures (a missing model, bad input, non-finite training) are messages, not tracebacks.
        print(f"mlsae {args.command}: error: {err}", file=sys.stderr)
        return 2


def _train(args) -> int:
    from mlsae.models import resolve_model
    from mlsae.train import config_from_preset, train

    preset = args.preset or ("default" if resolve_model(args.model).kind == "zoo" else "paper")
    names = {
        "expansion_factor": args.expansion_factor, "k": args.k, "layers": args.layers, "data": args.data,
        "max_tokens": args.max_tokens, "seq_len": args.seq_len, "batch_size": args.batch_size,
        "grad_accum": args.grad_accum, "lr": args.lr, "seed": args.seed, "device": args.device,
        "autocast": args.autocast, "checkpoint_every": args.checkpoint_every,
    }
    overrides = {k: v for k, v in names.items() if v is not None}
    cfg = config_from_preset(preset, model=args.model, tuned_lens=args.tuned_lens, **overrides)
    result = train(cfg, args.out, resume=not args.no_resume)
    last = result.metrics[-1] if result.metrics else {}
    print(json.dumps({"out": str(result.out_dir), "steps": result.steps, "tokens": result.tokens,
                      "seconds": round(result.seconds, 1), "fvu": last.get("fvu")}))
    return 0


def _eval(args) -> int:
    from mlsae.data import load_text, token_batches
    from mlsae.lens_training import residual_lens_for
    from mlsae.metrics import evaluate
    from mlsae.models import load_model
    from mlsae.sae import MLSAE

    sae = MLSAE.from_pretrained(args.sae).to(args.device)  # a missing or torn SAE fails before the model loads
    model, tokenizer = load_model(args.model, device=args.device)
    lens = residual_lens_for(args.model, model, tokenizer, **_lens_kwargs(args)) if args.tuned_lens else None
    batches = token_batches(load_text(args.data, split="test"), tokenizer, args.seq_len, args.batch_size, max_tokens=args.tokens)
    result = evaluate(model, tokenizer, sae, batches, lens=lens)
    for row in result.rows():
        print(json.dumps(row))
    return 0


def _lens_kwargs(args) -> dict:
    """The lens the SAE was trained in, from the train_config.json beside it (written by train);
    without one, the defaults of a training run on ``--data``."""
    from mlsae.train import TrainConfig

    saved = Path(args.sae).parent / "train_config.json"
    if saved.exists():
        return TrainConfig(**{**json.loads(saved.read_text()), "device": "cpu"}).lens_kwargs()
    return TrainConfig(data=args.data).lens_kwargs()


def _figures(args) -> int:
    from mlsae.notebooks import EXECUTED, run_all, summary, write_summary

    params = {"preset": args.preset}
    for name, value in args.parameter:
        try:
            params[name] = json.loads(value)
        except json.JSONDecodeError:
            params[name] = value
    runs = run_all(params, only=args.only)
    write_summary(runs, EXECUTED / "summary.json")
    print(summary(runs))
    print(f"executed notebooks: {EXECUTED}")
    print("figures: figures/ for the notebooks' default parameters, outputs/figures/ for any other "
          "($MLSAE_FIGURES overrides both)")
    return 0 if runs and all(r.ok for r in runs) else 1


def _zoo(args) -> int:
    from mlsae.zoo import build_zoo

    reports = build_zoo(args.names or None)
    print(json.dumps(reports, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
