#!/usr/bin/env bash
# GPU check (a few minutes on a CUDA machine): is the training step or the data loader the
# bottleneck, and how long would one MURA epoch (36,808 training images) take?
#
#   1. synthetic MURA set (400 studies) + decoded-image cache at 224 px
#   2. DenseNet-169 training step img/s, AMP + channels_last (murakit's runtime), batch 32, 64
#   3. cached-loader img/s with 8 workers (rotate + flip + to_tensor on cached squares)
#   4. projected epoch = 36808 / min(train img/s, loader img/s)
#
# Uses .venv/bin/python when the checkout has one, else python3 (which must already have
# torch, monai, numpy and pillow: the machine may be offline); murakit is imported from src/
# when it is not installed. DEVICE=cpu runs the same plumbing on a CPU (tiny sizes) as a dry run.
#
#   bash bench/gpu_check.sh            # or: DEVICE=cpu bash bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
if ! "$PY" -c "import murakit" 2>/dev/null; then
    export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
DEVICE="${DEVICE:-cuda}"
WORKERS="${WORKERS:-8}"
STUDIES="${STUDIES:-400}"
if [ "$DEVICE" = cpu ]; then  # dry run: same steps, sizes a 2-core CPU finishes quickly
    ARCH=densenet-mini; SIZE=64; BATCHES="8 16"; WORKERS=2; STUDIES=60
else
    ARCH=densenet169; SIZE=224; BATCHES="32 64"
fi
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

"$PY" - <<'EOF'
import platform, torch
print(f"python {platform.python_version()}, torch {torch.__version__}, "
      f"cuda {torch.version.cuda}, available: {torch.cuda.is_available()}")
for i in range(torch.cuda.device_count()):
    print(f"  GPU {i}: {torch.cuda.get_device_name(i)}")
EOF

echo "== training step: $ARCH at $SIZE px, AMP + channels_last, device $DEVICE"
for B in $BATCHES; do
    "$PY" bench/train_throughput.py --phase murakit --arch "$ARCH" --size "$SIZE" \
        --batch "$B" --warmup 5 --steps 20 --device "$DEVICE" > "$TMP/train-$B.json"
    "$PY" -c "import json,sys; f=json.load(open(sys.argv[1])); \
gpu=f', peak GPU {f[\"peak_gpu_mb\"]:.0f} MB' if 'peak_gpu_mb' in f else ''; \
print(f'  batch {sys.argv[2]:>3}: {f[\"img_per_s\"]:7.1f} img/s  ({f[\"runtime\"]}{gpu})')" \
        "$TMP/train-$B.json" "$B"
done

echo "== cached loader: $WORKERS workers, $STUDIES synthetic studies"
"$PY" bench/loader_throughput.py --studies "$STUDIES" --size "$SIZE" --workers "$WORKERS" \
    --batch 16 --epochs 2 --cache-only --json | tee "$TMP/loader.txt"

"$PY" - "$TMP" $BATCHES <<'EOF'
import json, sys
from pathlib import Path
tmp, batches = Path(sys.argv[1]), sys.argv[2:]
loader = json.loads((tmp / "loader.txt").read_text().strip().splitlines()[-1])["rates"][0]
print(f"== projected epoch over 36,808 images (loader {loader['cache']:.0f} img/s "
      f"with {loader['workers']} workers)")
for b in batches:
    train = json.loads((tmp / f"train-{b}.json").read_text())["img_per_s"]
    rate = min(train, loader["cache"])
    limit = "training step" if train <= loader["cache"] else "data loader"
    print(f"  batch {b:>3}: {36808 / rate / 60:5.1f} min  (limited by the {limit})")
EOF
