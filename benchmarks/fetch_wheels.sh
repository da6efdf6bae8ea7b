#!/usr/bin/env bash
# Downloads the wheels that benchmarks/device_check.sh installs on a GPU machine that has
# jax, flax, optax, orbax-checkpoint and chex but no index to install the rest from.
#
#   benchmarks/fetch_wheels.sh            # into benchmarks/wheels/ (git-ignored)
#   benchmarks/fetch_wheels.sh tqdm==4.67.1   # more packages, NAME==VERSION
#
# Then carry the folder with the device tool: carry=["benchmarks/wheels"]. It also copies
# Debian's Fashion-MNIST into benchmarks/data/ (git-ignored) for device_check.sh --followup:
# carry=["benchmarks/wheels", "benchmarks/data"].
#
# Which packages: the modules that `import zhang.train`, `zhang.cli` and
# benchmarks/throughput.py load (python -X importtime -c "import zhang.train"), less what
# the lent GPU machine's image already holds (/work/.library/device/KINDS.md: absl-py,
# chex, etils, flax, fsspec, jax, matplotlib, numpy, optax, orbax-checkpoint, pandas, pyyaml,
# scikit-learn, scipy, tqdm, ...). That leaves ml_collections alone (pure Python; its
# needs, absl-py and PyYAML, are there). tensorflow-datasets is imported only when a tfds
# dataset (mnist/fashion_mnist without IDX files, cifar10, cifar100) is loaded, and
# scikit-learn only for digits: device_check.sh uses synthetic_cifar10 and needs neither.
set -euo pipefail
cd "$(dirname "$0")"
dest=wheels
mkdir -p "$dest"
packages=(ml_collections==1.1.0 "$@")
# --no-deps: every need is named above; pure-Python wheels fit any Python 3 and platform,
# but name the GPU machine's (CPython 3.12, x86-64) so that a compiled one would fit too.
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any -d "$dest" "${packages[@]}"
ls -l "$dest"
du -sh "$dest"
# device_check.sh --followup trains on all of Fashion-MNIST, which the GPU machine lacks:
# Debian's IDX files (dataset-fashion-mnist, 30 MB), carried as benchmarks/data.
fm=/usr/share/datasets/fashion-mnist
if [[ -d "$fm" ]]; then
  mkdir -p data/fashion_mnist
  cp "$fm"/*-ubyte* data/fashion_mnist/
  du -sh data
else
  echo "fetch_wheels.sh: no $fm (apt-get install dataset-fashion-mnist) for --followup" >&2
fi
