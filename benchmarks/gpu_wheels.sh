#!/usr/bin/env bash
# Run HERE (a machine with package-registry access), before lending a GPU machine its 15 minutes:
# puts the pure-Python packages that the GPU image lacks as wheels in .whl/, ignored by git, for
# `run(carry=[".whl"])` to take along: Hydra and its parser (every command), datasets, dill and multiprocess (the
# data modules of the whole-run benchmarks and of plan's check). multiprocess is built per Python version: all four
# go along and pip takes the one that fits. Everything else the benchmark and the GPU tests need (torch,
# transformers, typer, rich, matplotlib, pytest, pyarrow, pandas, xxhash) is already on that image.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir .whl
python3 -m pip download -q --no-deps --only-binary=:all: -d .whl hydra-core==1.3.8 omegaconf==2.3.1 \
  datasets==5.2.0 dill==0.4.1
for version in 310 311 312 313; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$version" -d .whl multiprocess==0.70.19
done
python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3   # published as a source archive only
ls .whl
