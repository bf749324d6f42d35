#!/usr/bin/env bash
# GPU throughput measurements of megatiny, ready for the next lent GPU (see docs/PERFORMANCE.md).
#
#   bash benchmarks/gpu/run_all.sh [--out DIR]      on a CUDA machine: install what is missing, then
#                                                   every part under its time cap, JSON into DIR
#                                                   (default benchmarks/gpu/results)
#   bash benchmarks/gpu/run_all.sh --dry-run        print the plan and the estimated GPU time (< 12 min)
#   bash benchmarks/gpu/run_all.sh --smoke --out D  every part on CPU, tiny preset, 2 steps (the suite)
#
# Install: a bare CUDA image with PyTorch lacks DeepSpeed and some of megatiny's dependencies, and
# may have no network. Wheels carried with the repository in $MEGATINY_WHEELS (default
# benchmarks/gpu/wheels/, not in git) are installed with `pip --no-index`, only for the modules that
# do not import. Make them on a machine with network, for the image's Python version:
#   DS_BUILD_OPS=0 pip wheel --no-deps --no-build-isolation deepspeed==0.19.8 -w benchmarks/gpu/wheels
#   pip wheel -w benchmarks/gpu/wheels hjson msgpack ninja py-cpuinfo pydantic einops nvidia-ml-py \
#       pyyaml sentencepiece safetensors zstandard tokenizers tensorboard transformers pyarrow
#   (flash-attn: only a prebuilt wheel matching the image's torch/CUDA, put in the same folder;
#   without one, attention_backend auto uses PyTorch SDPA)
# Megatiny itself runs from this checkout (PYTHONPATH), nothing to build.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python}
WHEELS=${MEGATINY_WHEELS:-benchmarks/gpu/wheels}
smoke=0
for arg in "$@"; do
  case "$arg" in
    --smoke) smoke=1 ;;
    --dry-run) exec env PYTHONPATH="$PWD" "$PYTHON" benchmarks/gpu/run_all.py "$@" ;;
  esac
done

# module:package pairs; a module that does not import is installed from $WHEELS. One interpreter
# tries them all (one start and one torch import, not one per module) and prints the packages.
NEEDED="deepspeed:deepspeed hjson:hjson msgpack:msgpack ninja:ninja cpuinfo:py-cpuinfo pydantic:pydantic
einops:einops yaml:pyyaml sentencepiece:sentencepiece safetensors:safetensors zstandard:zstandard
tokenizers:tokenizers transformers:transformers pyarrow:pyarrow psutil:psutil tensorboard:tensorboard"
# shellcheck disable=SC2086
not_importing=$("$PYTHON" - $NEEDED 2>/dev/null <<'PY'
import contextlib, importlib, io, sys
missing = []
for pair in sys.argv[1:]:
    module, package = pair.split(":")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            importlib.import_module(module)
    except Exception:
        missing.append(package)
print(" ".join(missing))
PY
)
read -r -a missing <<< "$not_importing"
if compgen -G "$WHEELS/flash_attn-*.whl" >/dev/null && ! "$PYTHON" -c "import flash_attn" 2>/dev/null; then
  missing+=(flash-attn)
fi
if [ ${#missing[@]} -eq 0 ]; then
  echo "[run_all] install: every module imports, nothing to install"
elif [ "$smoke" = 1 ]; then
  echo "[run_all] install (smoke: not installing) would install from $WHEELS: ${missing[*]}"
else
  echo "[run_all] install from $WHEELS: ${missing[*]}"
  timeout 30 "$PYTHON" -m pip install --no-index --find-links "$WHEELS" "${missing[@]}"
fi
exec env PYTHONPATH="$PWD" "$PYTHON" benchmarks/gpu/run_all.py "$@"
