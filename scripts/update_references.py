"""Re-execute notebooks with the CI parameters and rewrite the values of their committed references.

tests/references/NN_name.json holds each key number a notebook records (mlsae.figures.records.record) when run
with the CI parameters, with its tolerance; tests/test_notebooks.py executes every notebook once under
nbval and compares its records with it (tests/notebook_references.py). Run this after changing a
notebook or a number on purpose, and review the diff (``git diff tests/references``). Tolerances are
kept as they are: they are set from a measured spread (scripts/measure_spread.py), never by this.

    .venv/bin/python scripts/update_references.py          # every notebook, in order (shared $MLSAE_HOME)
    .venv/bin/python scripts/update_references.py 03 07    # some of them
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the reference tooling is test code

from notebook_references import notebook_paths, update_reference  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("only", nargs="*", help="notebook numbers or name prefixes (default: all)")
    args = parser.parse_args()
    paths = [p for p in notebook_paths() if not args.only or any(p.name.startswith(o) for o in args.only)]
    if not paths:
        parser.error(f"no notebook matches {args.only}")
    failed = 0
    for path in paths:
        try:
            print(f"{path.stem}: {update_reference(path)}", flush=True)
        except Exception as err:  # keep going: report every notebook that failed
            failed += 1
            print(f"{path.stem}: FAILED\n{err}", file=sys.stderr, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
