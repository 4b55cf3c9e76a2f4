#!/usr/bin/env bash
# GPU smoke check: the CUDA paths of training, pseudo-labelling, torchrun/DDP and robustness evaluation
# on the default profile (teacher -> g1, a baseline, the robustness sets), tracking off, no DVC.
# Also compares one model's CUDA evaluation with its CPU evaluation.
#
#   bash benchmarks/gpu_smoke.sh DATA_DIR [OUT_DIR] [quick]
#
# DATA_DIR holds the Fashion-MNIST IDX .gz files. The frost textures must be importable as
# `imagecorruptions/frost` (README: robustness). Prints one JSON line per step and a summary; exits 1
# if any step failed.
set -uo pipefail
[ $# -ge 1 ] || { echo "usage: bash benchmarks/gpu_smoke.sh DATA_DIR [OUT_DIR] [quick]" >&2; exit 2; }
DATA=$(realpath "$1")
OUT=${2:-$(mktemp -d)}; mkdir -p "$OUT"; OUT=$(realpath "$OUT")
REPO=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" NSP_DATA_DIR="$DATA" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
W=$(mktemp -d)
cd "$W" || exit 1
$PY - "$REPO/params.yaml" "${3:-}" <<'EOF'
import sys, yaml, torch, timm
p = yaml.safe_load(open(sys.argv[1]))
if sys.argv[2] == "quick":  # plumbing check on a CPU: a few steps of everything
    p["teacher"]["epochs"] = p["baseline"]["epochs"] = 2
    p["student"]["pseudo"].update(per_class=200, threshold=0.0)
    p["robustness"].update(c_images=50, p_images=20)
    p["robustness"]["a_reference"]["epochs"] = 1
p["tracking"]["enabled"] = False
p["generations"] = {"g1": p["generations"]["g1"]}
p["baseline"]["match"] = "g1"
p["evaluate"]["models"] = ["teacher", "g1", "baseline"]
yaml.safe_dump(p, open("params.yaml", "w"), sort_keys=False)
print({"torch": torch.__version__, "timm": timm.__version__, "cuda": torch.cuda.is_available(),
       "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None})
EOF
fails=0
step() {  # step NAME CMD...: time one command, keep its log
  local name=$1; shift
  local t0=$SECONDS
  if "$@" >"$OUT/$name.log" 2>&1; then rc=0; else rc=$?; fi
  echo "{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - t0))}"
  [ $rc -eq 0 ] || { tail -20 "$OUT/$name.log"; fails=$((fails + 1)); }
}
NSP="$PY -m nsp.cli"
step prepare $NSP prepare --params params.yaml
step teacher $NSP train teacher --no-progress
step pseudo_g1 $NSP pseudo-label --gen g1 --no-progress
step student_g1 $NSP train student --gen g1 --no-progress
cp outputs/models/g1/metrics.json "$OUT/g1_single.metrics.json" 2>/dev/null
step student_g1_torchrun $PY -m torch.distributed.run --standalone --nproc_per_node=1 -m nsp.cli train student --gen g1 --no-progress
step baseline $NSP train baseline --no-progress
step robustness $NSP robustness --no-progress
for m in teacher g1 baseline; do step "eval_raw_$m" $NSP evaluate $m --raw --no-progress; done
for m in teacher g1 baseline; do step "eval_metrics_$m" $NSP evaluate $m --metrics; done
cp outputs/robustness/raw/g1.json "$OUT/g1_cuda.raw.json" 2>/dev/null
step eval_raw_g1_cpu env NSP_DEVICE=cpu $NSP evaluate g1 --raw --no-progress
cp outputs/robustness/raw/g1.json "$OUT/g1_cpu.raw.json" 2>/dev/null
$PY - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
def j(p):
    return json.loads(Path(p).read_text()) if Path(p).exists() else None
s = {m: j(f"outputs/models/{m}/metrics.json") for m in ("teacher", "g1", "baseline")}
print(json.dumps({m: {k: v[k] for k in ("test_acc", "val_acc", "steps", "train_seconds", "train_img_per_s", "bf16") if k in v} for m, v in s.items() if v}))
single = j(out / "g1_single.metrics.json")
if single and s["g1"]:
    print(json.dumps({"g1_test_acc_single": single["test_acc"], "g1_test_acc_torchrun": s["g1"]["test_acc"]}))
for m in ("teacher", "g1", "baseline"):
    r = j(f"outputs/robustness/{m}.metrics.json")
    if r:
        print(m, json.dumps({k: r[k] for k in ("clean_acc", "a_acc", "mce", "mfr", "mt5d", "calib_err") if k in r}))
cu, cpu = j(out / "g1_cuda.raw.json"), j(out / "g1_cpu.raw.json")
if cu and cpu:
    print(json.dumps({"precision": [cu.get("precision"), cpu.get("precision")],
                      "clean_acc": [cu.get("clean_acc"), cpu.get("clean_acc")],
                      "a_acc": [cu["a"].get("acc"), cpu["a"].get("acc")],
                      "c_clean_err": [cu.get("c_clean_err"), cpu.get("c_clean_err")],
                      "seconds": [cu.get("seconds"), cpu.get("seconds")]}))
EOF
[ $fails -eq 0 ] || { echo "gpu_smoke: $fails step(s) failed (logs in $OUT)" >&2; exit 1; }
