#!/usr/bin/env bash
# The README's "Run on a local Ray head" section, end to end: a Ray head on this machine,
# one recovery through `ray job submit`, the queue driver as a Ray job fed by `ray-app submit`,
# then status and results from the checkout. No AWS, no GPU.
#
#   bash scripts/local_head_demo.sh            (from the checkout, after the install command)
#
# It uses its own ports (GCS 6390, dashboard 8266) and its own RAY_APP_HOME, and stops the
# head at the end (`ray stop` stops every Ray on this machine: run it where no other Ray runs).
set -euo pipefail
cd "$(dirname "$0")/.."
source .venv/bin/activate
export RAY_APP_HOME="${RAY_APP_HOME:-$(mktemp -d)/ray-app}"
out="$(mktemp -d)"
trap 'ray stop --force >/dev/null 2>&1 || true' EXIT

echo "== start a Ray head (token auth on, as Ray 2.60 does by default)"
ray start --head --port 6390 --dashboard-port 8266 --num-cpus 2 --disable-usage-stats \
    >/dev/null
export RAY_AUTH_MODE=token  # the client reads the token ray start wrote (~/.ray/auth_token)

echo "== one recovery as a Ray job"
ray job submit --address http://127.0.0.1:8266 --working-dir . -- \
    python jobs/recover.py gd-1 --input tests/data/gd1_dr2_widefield.parquet \
    --out "$out/gd1" --job-id head-recover 2>&1 | grep -E "^job |^  #|succeeded|failed"
ray-app status head-recover
ray-app results head-recover --out "$out/copy"

echo "== the queue driver as a Ray job, fed from this shell (local SQLite queue)"
ray-app submit gd-1 --job-id head-queued --n-background 5000 --n-stream 300
ray job submit --address http://127.0.0.1:8266 --working-dir . \
    --runtime-env-json '{"env_vars": {"RAY_APP_EXIT_AFTER_IDLE_POLLS": "1", "RAY_APP_WAIT_S": "2"}}' \
    -- python jobs/consume.py 2>&1 | grep -E "consuming|stopped|succeeded|failed"
ray-app status head-queued
ray-app results head-queued --out "$out/queued"
ls "$out/queued"
echo "== done: outputs under $out, status store under $RAY_APP_HOME"
