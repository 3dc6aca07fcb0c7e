#!/usr/bin/env bash
# Start a single-machine Ray head for stepopsd jobs, with Ray's metrics endpoint for Prometheus.
#   deploy/jobs/start_head.sh                 # head on 127.0.0.1: GCS 6379, dashboard/jobs 8265, metrics 8080
#   RAY_HEAD_HOST=0.0.0.0 deploy/jobs/start_head.sh --num-gpus=1   # extra args go to `ray start`
# Custom resources: what deploy/jobs/node_resources.sh prints for this machine (env_cpu per core; with GPUs also
# learner_gpu / rollout_gpu / teacher_gpu per GPU), the slots the GPU presets' actors ask for; RAY_RESOURCES
# (JSON) replaces them.
# Stop it with `ray stop` (stops every Ray process of this user on the machine).
set -euo pipefail
source "$(dirname "$0")/env.sh"
HOST="${RAY_HEAD_HOST:-127.0.0.1}"
RESOURCES="${RAY_RESOURCES:-$(bash "$(dirname "$0")/node_resources.sh")}"
exec ray start --head \
  --node-ip-address="${RAY_NODE_IP:-127.0.0.1}" \
  --port="${RAY_PORT:-6379}" \
  --dashboard-host="$HOST" --dashboard-port="${RAY_DASHBOARD_PORT:-8265}" \
  --metrics-export-port="${RAY_METRICS_PORT:-8080}" \
  --num-cpus="${RAY_NUM_CPUS:-$(nproc)}" \
  --resources="$RESOURCES" \
  --disable-usage-stats "$@"
