#!/usr/bin/env bash
# GPU benchmarks: index throughput and query latency on CUDA (fp16, big batches, more
# decoding threads), next to clip-retrieval's ~2,500 images/s per A100 for ViT-B/32.
# BENCH_BATCH and BENCH_WORKERS reach index_builder.py (--batch-size, --workers) and the
# ceiling sweep; BENCH_PHOTOS (5,000) fills many batches of 256.
# Run on a GPU machine where the project is installed with a CUDA build of torch:
#   bash bench/gpu.sh            # writes bench/results/summary.json (+ index.json, latency.json)
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU visible to torch'"
export BENCH_DEVICE=cuda BENCH_BATCH="${BENCH_BATCH:-256}" BENCH_WORKERS="${BENCH_WORKERS:-$(nproc)}"
export BENCH_PHOTOS="${BENCH_PHOTOS:-5000}"
python bench/run_all.py --only index latency "$@"
