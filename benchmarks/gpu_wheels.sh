#!/usr/bin/env bash
# Run HERE (a machine with package-registry access), before lending a GPU machine its 15 minutes:
# puts the pure-Python packages that the GPU image lacks (Hydra and its parser) as wheels in .whl/,
# ignored by git, for `run(carry=[".whl"])` to take along. Everything else the benchmark and the GPU
# tests need (torch, transformers, typer, rich, matplotlib, pytest) is already on that image.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir .whl
python3 -m pip download -q --no-deps --only-binary=:all: -d .whl hydra-core==1.3.8 omegaconf==2.3.1
python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3   # published as a source archive only
ls .whl
