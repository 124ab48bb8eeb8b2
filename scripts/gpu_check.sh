#!/usr/bin/env bash
# The checks that need a GPU, for the day one is available; one results file.
#
#   bash scripts/gpu_check.sh [results.md]        (default: gpu_check_results.md)
#
# On a machine with CUDA: the GPU parity tests (tests/test_gpu.py: the model against stock transformers, the
# packed forward, the self-distillation losses and gradients against the CPU), the 2-rank FSDP and DDP tests on
# two GPUs if there are two (nccl), and the training-efficiency benchmark (ViT-S/14 and ViT-B/14: images/s, CUDA
# peak memory, utilisation of the GEMM peak). Each section records its command, exit status and output.
# Without a GPU it says so and exits 0. Exits 1 if any section failed.
set -uo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/setup_env.sh dev
PY=.venv/bin/python
GPUS=$($PY -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")
if [ "$GPUS" = "0" ]; then
    echo "gpu_check: no CUDA GPU on this machine (torch $($PY -c 'import torch; print(torch.__version__)')); nothing to check."
    exit 0
fi

OUT=${1:-gpu_check_results.md}
FAILED=0
section() {  # section TITLE COMMAND...: run it, append command, status and output to $OUT
    local title=$1; shift
    echo "gpu_check: $title ..." >&2
    local log; log=$(mktemp)
    local start=$SECONDS
    "$@" >"$log" 2>&1
    local status=$?
    [ $status -eq 0 ] || FAILED=1
    {
        echo "## $title"
        echo
        echo "\`$*\`: exit $status, $((SECONDS - start)) s"
        echo
        echo '```'
        tail -n 60 "$log"
        echo '```'
        echo
    } >>"$OUT"
    rm -f "$log"
}

{
    echo "# GPU check, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "- commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    $PY - <<'PYTHON'
import torch, transformers
print(f"- torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"- GPU {i}: {p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}")
PYTHON
    echo
} >"$OUT"

section "Parity on the GPU" $PY -m pytest -q -p no:cacheprovider tests/test_gpu.py
if [ "$GPUS" -ge 2 ]; then
    section "FSDP and DDP on 2 GPUs" $PY -m pytest -q -p no:cacheprovider tests/test_pretraining_fsdp.py tests/test_pretraining_ddp.py
else
    echo "## FSDP and DDP on 2 GPUs" >>"$OUT"; echo >>"$OUT"; echo "Skipped: one GPU." >>"$OUT"; echo >>"$OUT"
fi
section "Training efficiency (ViT-S/14, ViT-B/14)" $PY benchmarks/bench_training_efficiency.py --configs vits14 vitb14 \
    --json "${OUT%.md}.json"

echo "gpu_check: results in $OUT" >&2
exit $FAILED
