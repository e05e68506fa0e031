#!/usr/bin/env bash
# The figures of docs/own_data.md: scikit-learn's diabetes table as a CSV, one training run,
# its analysis, and the precision study (39 runs: about 10 minutes on 2 shared cores).
#
# Usage: bash benchmarks/own_data_study.sh [WORKDIR]   (default /tmp/nnlab_own_data)
set -euo pipefail
WORK=${1:-/tmp/nnlab_own_data}
mkdir -p "$WORK"
cd "$WORK"

# 442 patients, 10 baseline variables, target = disease progression one year later.
# scaled=False gives the raw units; sex is coded 1/2 (the source does not say which is
# which), written here as the text "one"/"two" so that it is one-hot encoded.
python - <<'EOF'
from sklearn.datasets import load_diabetes

df = load_diabetes(as_frame=True, scaled=False).frame
df["sex"] = df["sex"].map({1.0: "one", 2.0: "two"})
df.to_csv("diabetes.csv")  # with pandas' row numbers as the first, unnamed column
EOF

nnlab train --data diabetes.csv --targets target --epochs 60 \
    --set 'hidden_layers=[32,16]' --set batch_size=32 --output-dir runs
nnlab analyze --output-dir runs --skip james_stein || true  # exit 1 when a section failed

time nnlab study precision --data diabetes.csv --targets target \
    --bits 24,8,4,3,2 --rounding truncate,nearest,stochastic --seeds 3 --epochs 30 \
    --set 'hidden_layers=[32,16]' --set batch_size=16 --set tensorboard=false \
    --workers 2 --output-dir study
nnlab analyze --study study --output-dir runs
