#!/usr/bin/env bash
# Regenerate requirements.txt, the lock of the complete dependency set (main + every extra), from
# pyproject.toml with pip-tools. Run it after changing a pin in pyproject.toml, then `bash scripts/setup.sh`.
# Packages already in requirements.txt keep their pins unless pyproject.toml forces a change; extra arguments
# go to pip-compile, e.g. --upgrade (every package to its newest allowed release) or --upgrade-package NAME.
# torch is resolved from its CPU wheel (2.13.0+cpu, which needs no nvidia-* packages): pip's find-links
# supply it on the project's machines; elsewhere pass --extra-index-url https://download.pytorch.org/whl/cpu.
# pip-tools goes to a throwaway venv ($PIPTOOLS_VENV, default /tmp/mlsae-piptools), never into .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
PIPTOOLS_VERSION=7.6.2
PYTHON=${PYTHON:-python3}
TOOLS=${PIPTOOLS_VENV:-${TMPDIR:-/tmp}/mlsae-piptools}
if [ "$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" != 3.11 ]; then
  echo "[lock] $PYTHON is not Python 3.11 (pyproject.toml's requires-python); set PYTHON=..." >&2
  exit 1
fi
if ! "$TOOLS/bin/pip-compile" --version 2>/dev/null | grep -q "version $PIPTOOLS_VERSION\$"; then
  echo "[lock] installing pip-tools==$PIPTOOLS_VERSION into $TOOLS"
  "$PYTHON" -m venv "$TOOLS"
  "$TOOLS/bin/python" -m pip install --quiet --disable-pip-version-check "pip-tools==$PIPTOOLS_VERSION"
fi
echo "[lock] resolving pyproject.toml (main + all extras) into requirements.txt"
CUSTOM_COMPILE_COMMAND="bash scripts/lock.sh" "$TOOLS/bin/pip-compile" --quiet --all-extras --strip-extras \
  --allow-unsafe --no-emit-index-url --no-emit-find-links --output-file requirements.txt "$@" pyproject.toml

# torch: lock the version without the local label, so that a CUDA user's `pip install -r requirements.txt`
# accepts PyPI's (or an installed CUDA) build of the same release.
"$PYTHON" - <<'EOF'
import re
from pathlib import Path

lock = Path("requirements.txt")
lines = [l for l in lock.read_text().splitlines() if not l.startswith("# torch: ")]
at = [i for i, l in enumerate(lines) if re.match(r"torch==", l)]
assert len(at) == 1, "torch missing from requirements.txt"
lines[at[0]] = re.sub(r"\+\S+$", "", lines[at[0]])
lines[at[0]:at[0]] = ["# torch: resolved against the CPU wheel (2.13.0+cpu, no nvidia-* dependencies) and written without +cpu",
                      "# torch: (by scripts/lock.sh), so a CUDA user's pip install of this file gets PyPI's build (see README.md)"]
cuda = [l for l in lines if re.match(r"(nvidia-|triton==|cuda-)", l)]
if cuda:
    raise SystemExit(f"[lock] CUDA packages in the lock: torch was resolved from a CUDA build; resolve against the "
                     f"CPU wheel (see the top of scripts/lock.sh): {cuda}")
lock.write_text("\n".join(lines) + "\n")
print(f"[lock] requirements.txt pins {sum(bool(re.match(r'[A-Za-z0-9]', l)) for l in lines)} packages")
EOF
