#!/usr/bin/env bash
# Build Horovod 0.28.1 against the venv's torch (C++17) once, and cache the wheel outside the repo.
#   scripts/build_horovod.sh PYTHON
# Horovod 0.28.1 asks CMake for C++14, which torch >= 2.1 headers reject; we patch both
# CMakeLists.txt files to C++17 and build with Gloo only (no MPI, TF or MXNet).
set -euo pipefail
PY=${1:?usage: build_horovod.sh PYTHON}
VERSION=0.28.1
CACHE=${CNNSPARK_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cnnspark/wheels}
export PATH="$(dirname "$PY"):$PATH"  # the venv's cmake, when the system has none
TORCH=$("$PY" -c 'import torch; print(torch.__version__.replace("+", "_"))')
WHEEL_DIR="$CACHE/horovod-$VERSION-torch-$TORCH"

if "$PY" -c 'import horovod.torch' 2>/dev/null; then
  exit 0
fi
if ! ls "$WHEEL_DIR"/horovod-*.whl >/dev/null 2>&1; then
  echo "Building Horovod $VERSION against torch $TORCH (about 8 minutes on 2 cores, once; cached in $WHEEL_DIR)"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  "$PY" -m pip download --no-deps --no-binary :all: "horovod==$VERSION" -d "$work" -q
  tar -xzf "$work"/horovod-$VERSION.tar.gz -C "$work"
  src="$work/horovod-$VERSION"
  sed -i 's/CMAKE_CXX_STANDARD 14/CMAKE_CXX_STANDARD 17/g' "$src/CMakeLists.txt" "$src/horovod/torch/CMakeLists.txt"
  grep -q 'CMAKE_CXX_STANDARD 17' "$src/horovod/torch/CMakeLists.txt" || { echo "patching Horovod's C++ standard failed" >&2; exit 1; }
  mkdir -p "$WHEEL_DIR"
  HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_WITHOUT_TENSORFLOW=1 \
  HOROVOD_WITHOUT_MXNET=1 MAKEFLAGS="-j$(nproc)" \
    "$PY" -m pip wheel --no-deps --no-build-isolation -w "$work/dist" "$src"
  mv "$work"/dist/horovod-*.whl "$WHEEL_DIR"/
fi
"$PY" -m pip install -q --no-deps "$WHEEL_DIR"/horovod-*.whl
"$PY" -c 'import horovod.torch as hvd; assert hvd.gloo_built(), "Horovod was built without Gloo"'
