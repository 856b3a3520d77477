#!/usr/bin/env bash
# Every CUDA check of lumenkit in one command, for the lent GPU machine (its python3 has torch with CUDA,
# accelerate, transformers, opencv; diffusers, kornia (+ kornia_rs) and gsplat travel as wheels in .whl/, see gsir_cuda.py):
#   run(command="bash benchmarks/cuda_checks.sh [--no-gsir]", carry=[".whl"])
# Logs and the updated BENCHMARKS.md (section gsir-cuda) land in $OUT.
set -u
OUT=${OUT:-/tmp/cuda_out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda)" | tee -a "$OUT/gpu.txt"
# 1. the CUDA-marked tests that need no gsplat: the training engine, the samplers, long exposure
timeout 200 python3 -m pytest -q -m cuda -p no:cacheprovider tests/common/test_train_loop.py tests/t2i/test_train.py \
    tests/diffusion/test_sampler_api.py tests/longexp 2>&1 | tee "$OUT/pytest_cuda.txt" | tail -15
[ "${1:-}" = "--no-gsir" ] && exit 0
# 2. gsplat's rasterizer against the C++ CPU backend (the first use compiles gsplat's kernels and the C++ backend)
timeout 330 python3 benchmarks/gsir_cuda.py --write 2>&1 | tee "$OUT/gsir_cuda.txt" | tail -30
timeout 100 python3 -m pytest -q -m cuda -p no:cacheprovider tests/gsir/test_rasterize_cuda.py 2>&1 | tee "$OUT/pytest_gsir_cuda.txt" | tail -15
cp BENCHMARKS.md "$OUT/"
