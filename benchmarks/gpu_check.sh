#!/usr/bin/env bash
# The GPU check in one command; benchmarks/gpu_check.py says what it runs and writes.
#     bash benchmarks/gpu_check.sh OUT_DIR [--dry] [--parts NAME,NAME]
# Where $WHEELS (default .whl, made by `make gpu-wheels`) holds wheels, they are installed first,
# without network, into a directory of their own ($SITE) put first on PYTHONPATH: the GPU
# machine has torch, transformers and tensorboard, but not deepspeed or webdataset.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ]; then
    echo "usage: bash benchmarks/gpu_check.sh OUT_DIR [--dry] [--parts NAME,NAME]" >&2
    exit 2
fi
PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
SITE=${SITE:-/tmp/biodistill-site}
if compgen -G "$WHEELS/*.whl" >/dev/null; then
    echo "gpu_check: installing $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS into $SITE" >&2
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "$WHEELS"/*.whl
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
exec "$PYTHON" benchmarks/gpu_check.py "$@"
