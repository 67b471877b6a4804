"""Measure how far the notebooks' key numbers move under other kernels and thread counts; set tolerances.

Zoo weights differ slightly across CPUs (SIMD kernels, thread counts, MKL's code paths), and the SAEs
trained on them amplify that. One machine can produce such perturbations itself: this script executes
every notebook with the CI parameters (as the test suite does, under nbval) from a fresh ``$MLSAE_HOME``
under the environment given, and stores the records; ``table`` compares every stored run with the
committed references and proposes each quantity's tolerance as a multiple of the largest deviation seen,
with a floor (a share of the quantity's size; at least 1 for a count). A quantity a reviewer marked
``"exact"`` in its reference (a shape, a count fixed by construction) stays exact; strings are exact.

    .venv/bin/python scripts/measure_spread.py run base
    .venv/bin/python scripts/measure_spread.py run default-1t -e ATEN_CPU_CAPABILITY=default -e OMP_NUM_THREADS=1
    .venv/bin/python scripts/measure_spread.py table                     # markdown table on stdout
    .venv/bin/python scripts/measure_spread.py table --write-tolerances  # and set them in tests/references

Runs are stored as tests/references/spread/LABEL.json (records only, a few kB), so the table can be
re-derived and reviewed. Setting tolerances is the one thing that writes them; regenerating a reference
(scripts/update_references.py) rewrites values only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the reference tooling is test code

from notebook_references import (  # noqa: E402
    CI_PARAMETERS,
    REFERENCES,
    execute,
    leaves,
    notebook_paths,
    read_reference,
    reference_path,
    write_reference,
)

SPREAD = REFERENCES / "spread"


def run(label: str, env: list[str], only: list[str]) -> int:
    for item in env:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"-e {item!r}: give KEY=VALUE")
        os.environ[key] = value
    home = ROOT / ".cache" / "spread" / label
    shutil.rmtree(home, ignore_errors=True)
    os.environ["MLSAE_HOME"] = str(home)  # fresh: every zoo model and SAE is trained under this environment
    result = {"label": label, "env": dict(i.partition("=")[::2] for i in env), "records": {}, "failures": {},
              "seconds": {}}
    for path in notebook_paths():
        if only and not any(path.name.startswith(o) for o in only):
            continue
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            ex = execute(path, Path(tmp), CI_PARAMETERS[path.stem])
        result["seconds"][path.stem] = round(time.perf_counter() - start, 1)
        result["records"][path.stem] = ex.records
        if ex.failure:
            result["failures"][path.stem] = ex.failure[-3000:]
        print(f"[spread {label}] {path.stem}: {'ok' if not ex.failure else 'FAILED'} in "
              f"{result['seconds'][path.stem]:.0f} s", flush=True)
    SPREAD.mkdir(parents=True, exist_ok=True)
    (SPREAD / f"{label}.json").write_text(json.dumps(result, indent=1) + "\n")
    shutil.rmtree(home, ignore_errors=True)
    return 1 if result["failures"] else 0


def _round_up(x: float) -> float:
    """``x`` rounded up to two significant digits (a tolerance a reviewer can read)."""
    if x <= 0:
        return 0.0
    scale = 10 ** (math.floor(math.log10(x)) - 1)
    rounded = float(f"{math.ceil(x / scale - 1e-9) * scale:.2g}")  # the decimal a reviewer reads, not float noise
    return int(rounded) if rounded >= 1 and rounded.is_integer() else rounded


def table(multiple: float, rel_floor: float, write: bool) -> int:
    runs = [json.loads(p.read_text()) for p in sorted(SPREAD.glob("*.json"))]
    if not runs:
        raise SystemExit(f"no runs in {SPREAD}; start with `measure_spread.py run LABEL`")
    print(f"runs: {', '.join(r['label'] + ' (' + (' '.join(f'{k}={v}' for k, v in r['env'].items()) or 'as CI') + ')' for r in runs)}\n")
    print("| notebook | quantity | values | reference (first) | largest deviation | relative | tolerance |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for path in notebook_paths():
        reference = read_reference(path)
        if reference is None:
            print(f"| {path.stem[:2]} | (no reference) | | | | | |")
            continue
        for name, spec in reference["quantities"].items():
            expected = [v for _, v in leaves(spec["value"])]
            numeric = all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in expected)
            deviation, relative, seen = 0.0, 0.0, 0
            for r in runs:
                got = r["records"].get(path.stem, {}).get(name)
                if got is None:
                    continue
                seen += 1
                got = [v for _, v in leaves(got)]
                if not numeric:
                    deviation = max(deviation, float(got != expected))
                    continue
                for g, e in zip(got, expected, strict=True):
                    deviation = max(deviation, abs(g - e))
                    relative = max(relative, abs(g - e) / abs(e) if e else 0.0)
            if not numeric:
                tolerance = "exact"
                shown = "differs" if deviation else "equal"
                print(f"| {path.stem[:2]} | {name} | {len(expected)} | {expected[0]!r} | {shown} | | exact |")
            elif spec.get("tolerance") == "exact":  # set by a reviewer (a shape, a count by construction): kept
                tolerance = "exact"
                print(f"| {path.stem[:2]} | {name} | {len(expected)} | {expected[0]:.6g} | {deviation:.2g} | "
                      f"{relative:.2g} | exact |")
            else:
                floor = rel_floor * max(abs(e) for e in expected)
                if all(isinstance(e, int) for e in expected):
                    floor = max(floor, 1.0)  # a count: one more or one fewer is the smallest change there is
                tolerance = {"abs": _round_up(max(multiple * deviation, floor))}
                print(f"| {path.stem[:2]} | {name} | {len(expected)} | {expected[0]:.6g} | {deviation:.2g} | "
                      f"{relative:.2g} | {tolerance['abs']:.2g} |")
            if seen < len(runs):
                print(f"<!-- {name}: recorded by {seen} of {len(runs)} runs -->")
            if write:
                spec["tolerance"] = tolerance
        if write:
            write_reference(reference_path(path), reference)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="execute every notebook under an environment from a fresh MLSAE_HOME")
    r.add_argument("label", help="name of the run (its records go to tests/references/spread/LABEL.json)")
    r.add_argument("-e", "--env", action="append", default=[], metavar="KEY=VALUE", help="environment variable")
    r.add_argument("--only", nargs="*", default=[], help="notebook numbers (default: all)")
    t = sub.add_parser("table", help="largest deviation per quantity and the tolerance it gives")
    t.add_argument("--multiple", type=float, default=3.0, help="tolerance = multiple x largest deviation (3)")
    t.add_argument("--rel-floor", type=float, default=1e-3,
                   help="floor, relative to the quantity's largest reference value (1e-3)")
    t.add_argument("--write-tolerances", action="store_true", help="write the tolerances into tests/references")
    args = parser.parse_args()
    if args.command == "run":
        return run(args.label, args.env, args.only)
    return table(args.multiple, args.rel_floor, args.write_tolerances)


if __name__ == "__main__":
    sys.exit(main())
