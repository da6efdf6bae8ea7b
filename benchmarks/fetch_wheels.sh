#!/usr/bin/env bash
# Downloads the wheels that benchmarks/device_check.py installs on an accelerator machine
# that has jax, flax, optax, orbax-checkpoint and chex but no package index to install the
# rest from. Run it on a machine with an index, then copy benchmarks/wheels/ along.
#
#   benchmarks/fetch_wheels.sh                # into benchmarks/wheels/ (git-ignored)
#   benchmarks/fetch_wheels.sh tqdm==4.67.1   # more packages, NAME==VERSION
#
# Which packages: the modules that `import zhang.experiment.train` loads (python -X importtime -c
# "import zhang.experiment.train") less what such machines usually hold (absl-py, chex, etils, flax,
# jax, numpy, optax, orbax-checkpoint, pyyaml, tqdm, ...). That leaves ml_collections
# (pure Python; its needs, absl-py and PyYAML, are there). tensorflow-datasets is imported
# only when a tfds dataset is loaded, and scikit-learn only for digits: device_check.py
# trains on synthetic_cifar10 and needs neither.
set -euo pipefail
cd "$(dirname "$0")"
dest=wheels
mkdir -p "$dest"
packages=(ml_collections==1.1.0 "$@")
# --no-deps: every need is named above. Pure-Python wheels fit any Python 3 and platform;
# naming CPython 3.12 on x86-64 makes a compiled one fit a common accelerator image too.
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any -d "$dest" "${packages[@]}"
ls -l "$dest"
du -sh "$dest"
