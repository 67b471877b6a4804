"""Command line: ``python -m mlsae {train,eval,export,dashboard,zoo,figures}``.

Examples::

    python -m mlsae zoo                                   # build the offline model zoo
    python -m mlsae train --model zoo-m --preset default  # MLSAE on an offline zoo model
    python -m mlsae train --model pythia-70m --expansion-factor 64 -k 32 --tuned-lens
    python -m mlsae eval ~/.cache/mlsae/saes/<run> --tokens 50000    # model, data, lens from the run
    torchrun --standalone --nproc-per-node 2 -m mlsae train --model zoo-m   # data-parallel, 2 processes
    python -m mlsae export <run> --format saelens --out saelens/   # one SAELens TopKSAE per layer
    python -m mlsae dashboard <run> --out dash/           # a static latent browser: open dash/index.html
    python -m mlsae figures --only 03 -p preset tiny     # one notebook, a few minutes on a laptop
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mlsae.training.config import TrainConfig, field_default, flat_fields


def _layers(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--layers takes comma-separated integers like 0,3; got {text!r}") from None


def _add_config_flags(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One flag per training setting (``--expansion-factor``, ``-k`` too for one-letter names), nested records
    included, typed from the annotation, its help from the field's comment; every default is None, so only what
    is given overrides the preset. (Plain argparse rather than simple-parsing's parser, which fills in the
    declared defaults: a preset needs to know what was not given.)"""
    helps, choices = TrainConfig.field_help(), TrainConfig.choices()
    for name, (_, kind) in flat_fields().items():
        if name in skip:
            continue
        flags = [f"--{name.replace('_', '-')}"] + ([f"-{name}"] if len(name) == 1 else [])
        help = f"{helps.get(name, '')} [preset's value, else {field_default(name)!r}]".strip()
        if kind is bool:
            parser.add_argument(*flags, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help)
        elif name in choices:
            parser.add_argument(*flags, dest=name, choices=choices[name], default=None, help=help)
        elif kind in (int, float, str):
            parser.add_argument(*flags, dest=name, type=kind, default=None, help=help)
        elif kind == (int | None):  # an optional number: given, or the preset's None
            parser.add_argument(*flags, dest=name, type=int, default=None, help=help)
        elif kind == (list[int] | None):
            parser.add_argument(*flags, dest=name, type=_layers, default=None, help=help)
        else:  # a new field of another type must say how it is parsed
            raise TypeError(f"no command-line parser for the training setting {name}: {kind}")


def main(argv: list[str] | None = None) -> int:
    """Run one command line (``argv``, default ``sys.argv[1:]``); the exit status."""
    parser = argparse.ArgumentParser(prog="mlsae", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train an MLSAE (or a single-layer SAE with --layers)")
    t.add_argument("--model", required=True, help=TrainConfig.field_help()["model"])
    t.add_argument("--preset", default=None, help="paper | default | tiny: where every value not given starts "
                   "(default: 'paper' for hub models, 'default' for the zoo)")
    _add_config_flags(t, skip=("model", "preset"))
    t.add_argument("--out", type=Path, default=None, help="output folder (default: the shared cache)")
    t.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint in --out")

    e = sub.add_parser("eval", help="evaluate a saved SAE on held-out text")
    e.add_argument("run", type=Path, nargs="?", default=None,
                   help="a training run's folder (or its sae/ folder, or a hub id): model, data and lens are read "
                        "from its provenance.json")
    e.add_argument("--sae", type=Path, default=None, help="folder written by save_pretrained (instead of RUN)")
    e.add_argument("--model", default=None, help="default: the model the SAE was trained on")
    e.add_argument("--data", default=None, help="default: the data the SAE was trained on (its test split)")
    e.add_argument("--tokens", type=int, default=50_000, help="held-out tokens evaluated (default 50,000)")
    e.add_argument("--seq-len", type=int, default=None, help="default: the training run's")
    e.add_argument("--batch-size", type=int, default=16, help="sequences per evaluation batch (default 16)")
    e.add_argument("--tuned-lens", action=argparse.BooleanOptionalAction, default=None,
                   help="default: as the SAE was trained")
    e.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")

    x = sub.add_parser("export", help="write a saved MLSAE in another library's format (SAELens: one SAE per layer)")
    x.add_argument("run", help="a training run's folder, its sae/ folder, or a hub id")
    x.add_argument("--format", required=True, choices=["saelens"], help="saelens: one TopKSAE folder per layer "
                   "(blocks.<l>.hook_resid_post/cfg.json + sae_weights.safetensors), loadable by SAE.load_from_disk")
    x.add_argument("--out", type=Path, required=True, help="folder to write (an earlier export there is replaced)")
    x.add_argument("--layers", type=_layers, default=None, help="layers to export, e.g. 0,3 (default: every layer "
                   "it was trained on)")
    x.add_argument("--model", default=None, help="the model's name, when the SAE does not record it")

    d = sub.add_parser("dashboard", help="write a static latent dashboard (open its index.html; no server needed)")
    d.add_argument("run", help="a training run's folder, its sae/ folder, or a hub id")
    d.add_argument("--out", type=Path, required=True, help="folder to write (an earlier dashboard there is replaced)")
    d.add_argument("--tokens", type=int, default=50_000, help="held-out tokens analysed (default 50,000)")
    d.add_argument("--n-examples", type=int, default=8, help="top examples kept per latent and layer (default 8)")
    d.add_argument("--neuronpedia", type=Path, default=None,
                   help="also write the Neuronpedia-style export (features/ and activations/ jsonl.gz) here")
    for flag, help in (("--model", "default: the model the SAE was trained on"),
                       ("--data", "default: the data the SAE was trained on (its test split)")):
        d.add_argument(flag, default=None, help=help)
    d.add_argument("--batch-size", type=int, default=16, help="sequences per batch (default 16)")
    d.add_argument("--device", default="cpu", help="cpu, cuda, ... (default cpu)")

    z = sub.add_parser("zoo", help="build the offline model zoo and print its report")
    z.add_argument("names", nargs="*", help="zoo models to build (default: the whole default zoo)")

    f = sub.add_parser("figures", help="run every numbered notebook in order with papermill")
    f.add_argument("--preset", default="default", help="notebook preset: default | tiny | paper")
    f.add_argument("--only", nargs="*", default=None, help="notebook number prefixes, e.g. 01 03")
    f.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="extra papermill parameter for every notebook (value parsed as JSON when possible)")

    args = parser.parse_args(argv)
    commands = {"train": _train, "eval": _eval, "export": _export, "dashboard": _dashboard, "figures": _figures, "zoo": _zoo}
    try:
        return commands[args.command](args)
    except (ValueError, TypeError, OSError, RuntimeError, ConnectionError, FloatingPointError) as err:
        # Expected failures (a missing model, bad input, non-finite training) are messages, not tracebacks.
        print(f"mlsae {args.command}: error: {err}", file=sys.stderr)
        return 2


def _train(args) -> int:
    from mlsae.models.registry import resolve_model
    from mlsae.training import distributed
    from mlsae.training.config import config_from_preset
    from mlsae.training.train import train

    preset = args.preset or ("default" if resolve_model(args.model).kind == "zoo" else "paper")
    overrides = {name: getattr(args, name) for name in flat_fields()
                 if name not in ("model", "preset") and getattr(args, name) is not None}
    cfg = config_from_preset(preset, model=args.model, **overrides)
    with distributed.process_group(cfg.device) as group:  # under torchrun: this process's rank; else one process
        result = train(cfg, args.out, resume=not args.no_resume)
        if group.main:
            last = result.metrics[-1] if result.metrics else {}
            print(json.dumps({"out": str(result.out_dir), "data": cfg.data, "steps": result.steps, "tokens": result.tokens,
                              "seconds": round(result.seconds, 1), "fvu": last.get("fvu"), "processes": group.world,
                              "data_exhausted": result.data_exhausted}))
    return 0


def _eval(args) -> int:
    from mlsae.analysis.metrics import evaluate
    from mlsae.studies.runs import open_run

    if (args.run is None) == (args.sae is None):
        raise ValueError("give the run folder (mlsae eval RUN_DIR) or --sae FOLDER, one of the two")
    run = open_run(args.sae or args.run, model=args.model, data=args.data, seq_len=args.seq_len,
                   tuned_lens=args.tuned_lens, device=args.device)
    result = evaluate(run.model, run.tokenizer, run.sae, run.batches(args.tokens, args.batch_size), lens=run.lens)
    for row in result.rows():
        print(json.dumps(row))
    return 0


def _export(args) -> int:
    from mlsae.interop.saelens import export_saelens

    folders = export_saelens(args.run, args.out, layers=args.layers, model=args.model)
    print(json.dumps({"format": args.format, "out": str(args.out), "folders": [str(f) for f in folders]}))
    return 0


def _dashboard(args) -> int:
    from mlsae.interop.dashboard import dashboard_data, write_dashboard
    from mlsae.studies.runs import open_run

    run = open_run(args.run, model=args.model, data=args.data, device=args.device)
    data = dashboard_data(run.model, run.tokenizer, run.sae, run.batches(args.tokens, args.batch_size), lens=run.lens,
                          n_examples=args.n_examples)
    site = write_dashboard(data, args.out, title=f"{run.cfg.model}: MLSAE latents",
                           meta={"source": run.source, "data": f"{run.cfg.data} (test split)"})
    report = {"out": str(site.folder), "index": str(site.index), "latents": site.n_latents, "files": site.n_files,
              "bytes": site.n_bytes}
    if args.neuronpedia is not None:
        from mlsae.interop.neuronpedia import write_neuronpedia

        export = write_neuronpedia(data, args.neuronpedia, model_id=Path(run.cfg.model).name,
                                   source_id=f"mlsae-x{round(run.sae.cfg.expansion_factor)}-k{run.sae.cfg.k}")
        report["neuronpedia"] = str(export.folder)
    print(json.dumps(report))
    print(f"open {site.index} in a browser (or: python -m http.server -d {site.folder})", file=sys.stderr)
    return 0


def _figures(args) -> int:
    from mlsae.figures.notebooks import EXECUTED, run_all, summary, write_summary

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
    from mlsae.models.zoo import build_zoo

    reports = build_zoo(args.names or None)
    print(json.dumps(reports, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
