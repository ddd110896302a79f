#!/usr/bin/env bash
# Everything hpsearch measures on a GPU, in one command from the project root (no network needed):
#   pytest -m gpu; every row of bench/throughput.py (with --profile); a real 10-trial x 4-epoch seednet
#   search on 50,000 CIFAR-shaped images (bench/gpudata.py, through the custom-dataset hook) with one
#   worker and with trials_per_gpu: auto, sampling GPU utilisation and memory; then bench/gpu_summary.py
#   turns the logs into $OUT/gpu_check.json and prints a table (time outside trials, first-trial overhead).
# Each step has its own time limit (about 8 minutes in all); the logs come back as $OUT/logs.tgz.
# On the device machine, see bench/RESULTS.md ("GPU check") for the install line and the carry list.
# A CPU smoke test of the script itself:  DEV=cpu SMALL=1 OUT=/tmp/gpu-out bash bench/gpu_check.sh
set -u
export PYTHONUNBUFFERED=1
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
OUT=${OUT:-/tmp/gpu-out}
L=${GPU_LOGS:-/tmp/gpu-logs}
DEV=${DEV:-cuda}
SMALL=${SMALL:-0}
PY=${PY:-python3}
mkdir -p "$OUT" "$L"
rm -rf "${L:?}"/* /tmp/gpu-check-runs
export PYTHONPATH="$root:$root/bench${PYTHONPATH:+:$PYTHONPATH}"

pack() { tar -C "$(dirname "$L")" -czf "$OUT/logs.tgz" "$(basename "$L")"; }
step() {  # step NAME LIMIT_S COMMAND...: run with a time limit, log to $L/NAME.log, record rc and wall time
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s) $(date -u +%T)"
  local start; start=$(date +%s.%N)
  timeout -k 5 "$limit" "$@" > "$L/$name.log" 2>&1
  local rc=$?
  local wall; wall=$("$PY" -c "import time; print(round(time.time() - $start, 2))")
  printf '%s\t%s\t%s\n' "$name" "$rc" "$wall" >> "$L/steps.tsv"
  echo "=== $name rc=$rc wall=${wall}s"
  tail -n 15 "$L/$name.log"
  pack
}
sample_gpu() {  # sample_gpu NAME: utilisation and memory every 0.5 s until stop_sampling
  if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits -lms 500 \
      > "$L/util_$1.csv" 2>&1 &
    SAMPLER=$!
  else
    SAMPLER=""
  fi
}
stop_sampling() { [ -n "${SAMPLER:-}" ] && kill "$SAMPLER" 2> /dev/null; wait 2> /dev/null; SAMPLER=""; }

{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  "$PY" -c 'import torch, optuna, sqlalchemy, pydantic, plotly; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "optuna", optuna.__version__, "sqlalchemy", sqlalchemy.__version__, "pydantic", pydantic.__version__, "plotly", plotly.__version__)'
  echo "cores $(nproc)"; git -C "$root" log -1 --format='commit %h %s' 2> /dev/null; } > "$L/env.txt" 2>&1
cat "$L/env.txt"

if [ "$SMALL" = 1 ]; then
  LIMITS=(120 240 150 150); TP=(--quick --repeats 1 --models seednet,mlp --batch-sizes 64)
  N=2000; TRIALS=4; EPOCHS=2
else
  LIMITS=(110 170 90 90); TP=(--repeats 2)
  N=50000; TRIALS=10; EPOCHS=4
fi

step pytest_gpu "${LIMITS[0]}" "$PY" -m pytest -m gpu -q -rA -p no:cacheprovider
step throughput "${LIMITS[1]}" "$PY" bench/throughput.py --device "$DEV" --profile "${TP[@]}"

# The real searches: the shipped seednet study on CIFAR-shaped learnable data, one worker vs auto.
export GPUDATA_N=$N
"$PY" - "$DEV" <<'EOF'
import sys, yaml
device = sys.argv[1]
study = yaml.safe_load(open("studies/cifar10-seednet.yaml"))
study.update(device=device, data={"dataset": "gpudata:cifar_like", "val_split": 0.1})
for name, per_gpu in (("one", 1), ("auto", "auto")):
    study["name"] = f"gpu-{name}"
    study["output_dir"] = f"/tmp/gpu-check-runs/gpu-{name}"
    study["workers"] = {"gpus": "all" if device == "cuda" else "none", "trials_per_gpu": per_gpu}
    yaml.safe_dump(study, open(f"/tmp/gpu-{name}.yaml", "w"), sort_keys=False)
EOF
for kind in one auto; do
  extra=()
  [ "$DEV" = cpu ] && [ "$kind" = auto ] && extra=(--workers 2)  # no GPU to size: two CPU workers instead
  rm -f "/tmp/gpu-$kind.db"
  sample_gpu "$kind"
  step "search_$kind" "${LIMITS[2]}" "$PY" -m hpsearch run "/tmp/gpu-$kind.yaml" --n-trials "$TRIALS" --epochs "$EPOCHS" \
    --storage "sqlite:////tmp/gpu-$kind.db" "${extra[@]}"
  stop_sampling
  cp -r "/tmp/gpu-check-runs/gpu-$kind/logs" "$L/workers_$kind" 2> /dev/null
  cp "/tmp/gpu-$kind.db" "$L/" 2> /dev/null
done

"$PY" bench/gpu_summary.py "$L" --out "$OUT/gpu_check.json" | tee "$L/summary.txt"
pack
echo "=== done $(date -u +%T)"
