#!/usr/bin/env bash
# Training tokens per second of the torch engine on a machine with CUDA GPUs: the makemore preset's model and a
# larger one (8 layers x 256 channels, block 64, batch 256), in float32 and bfloat16 autocast, on one GPU and
# with torchrun on every GPU (DistributedDataParallel over NCCL, the same global batch split across them).
# One table on standard output; each row is one run of benchmarks/torch_throughput.py.
#
#   benchmarks/gpu.sh               on a CUDA machine (needs microgpt installed with its torch extra: pip install ".[torch]")
#   benchmarks/gpu.sh --cpu         a smoke test on the CPU: 2 steps of batch 4 per row, 1 and 2 gloo processes
#   STEPS=200 benchmarks/gpu.sh     more timed steps per row (default 50; warm-up 10)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
SCRIPT=benchmarks/torch_throughput.py

if [[ "${1:-}" == "--cpu" ]]; then
    DEVICE=cpu; DTYPES="float32"; PROCESSES=2; STEPS=${STEPS:-2}; WARMUP=1; BATCH=(--batch-size 4)
elif [[ -n "${1:-}" ]]; then
    echo "usage: benchmarks/gpu.sh [--cpu]" >&2; exit 2
else
    DEVICE=cuda; DTYPES="float32 bfloat16"; STEPS=${STEPS:-50}; WARMUP=10; BATCH=()
    PROCESSES=$("$PYTHON" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")
    if [[ "$PROCESSES" -eq 0 ]]; then
        echo "benchmarks/gpu.sh: PyTorch sees no CUDA GPU here; run it on a GPU machine, or use --cpu for a smoke test" >&2
        exit 2
    fi
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | sed 's/^/# GPU: /'
fi
echo "# $("$PYTHON" -c 'import torch; print("torch", torch.__version__)'); $(nproc) CPU cores"

COUNTS="1"
if [[ "$PROCESSES" -gt 1 ]]; then COUNTS="1 $PROCESSES"; fi
"$PYTHON" "$SCRIPT" --header
for model in makemore large; do
    for dtype in $DTYPES; do
        for n in $COUNTS; do
            args=(--model "$model" --device "$DEVICE" --dtype "$dtype" --steps "$STEPS" --warmup "$WARMUP" "${BATCH[@]}")
            if [[ "$n" -eq 1 ]]; then
                "$PYTHON" "$SCRIPT" "${args[@]}"
            else
                # OMP_NUM_THREADS: torchrun would otherwise set it to 1 and say so on every launch
                OMP_NUM_THREADS=1 "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node "$n" \
                    "$SCRIPT" "${args[@]}"
            fi
        done
    done
done
