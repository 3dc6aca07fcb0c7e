#!/usr/bin/env bash
# `ray up` for real, against this machine: bring up deploy/ray_cluster_local.yaml with Ray's local node
# provider over ssh to 127.0.0.1, submit the smoke config (2 steps) with `ray job submit`, check the job
# succeeded and that a Prometheus of our own scraped `stepopsd_delta_std` from the cluster, `ray down`, and print
#   cluster check: up ok, job ok, metrics ok, down ok
# (or which step failed). Exit 0 only when all four are ok. Cleans up after itself even when a step fails.
#
#   bash deploy/jobs/local_cluster_check.sh        # needs root (or sudo): creates the cluster user, runs sshd
#
# What is specific to "this machine" (the rest of the YAML is used as is): head_ip 127.0.0.1 and no workers;
# the cluster runs as a dedicated user (CHECK_USER, default stepopsd-raycheck) with its own key, so that
# `ray stop` (which `ray down` runs on the head) can only stop THAT user's Ray -- never the caller's or a test
# session's; the repo and its .venv are used in place (no file mounts / setup commands: they would reinstall
# the venv), and every Ray port is a free one with its own --temp-dir. sshd runs on port 22 if nothing
# listens there (Ray's ssh runner has no port option). Prometheus, rsync and sshd come from
# deploy/install_system.sh.
set -uo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${VENV:-$REPO_ROOT/.venv}"
PY="$VENV/bin/python"
RAY="$VENV/bin/ray"
CHECK_USER="${CHECK_USER:-stepopsd-raycheck}"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
T0=$(date +%s)
WORK="$(mktemp -d /tmp/rcc.XXXXXX)"   # short: Ray's unix socket paths live under the temp dir
chmod 755 "$WORK"
UP=fail; JOB=fail; METRICS=fail; DOWN=fail; UP_TRIED=0; STARTED_SSHD=""; PROM_PID=""; GRANTED=()
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled
log() { echo "[cluster check $(( $(date +%s) - T0 ))s] $*"; }
port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

cleanup() {
  local rc=$?
  if [ "$UP_TRIED" = 1 ]; then
    log "ray down"
    if timeout 180 "$RAY" down -y "$WORK/cluster.yaml" >"$WORK/down.log" 2>&1; then
      sleep 2
      if pgrep -u "$CHECK_USER" -f 'raylet|gcs_server' >/dev/null; then
        log "ray down left processes of $CHECK_USER running: $(pgrep -u "$CHECK_USER" -f 'raylet|gcs_server' | tr '\n' ' ')"
      else
        DOWN=ok
      fi
    else
      log "ray down failed: $(tail -5 "$WORK/down.log")"
    fi
  fi
  for _ in $(seq 20); do   # whatever is left of the cluster (its user only; re-check: a dying parent may fork)
    pgrep -u "$CHECK_USER" >/dev/null || break
    $SUDO pkill -9 -u "$CHECK_USER" 2>/dev/null; sleep 0.5
  done
  for d in "${GRANTED[@]}"; do $SUDO setfacl -x "u:$CHECK_USER" "$d" 2>/dev/null; done
  [ -n "$PROM_PID" ] && kill "$PROM_PID" 2>/dev/null
  [ -n "$STARTED_SSHD" ] && $SUDO kill "$(cat "$WORK/sshd.pid" 2>/dev/null)" 2>/dev/null
  if [ "${KEEP_WORK:-}" = "" ]; then $SUDO rm -rf "$WORK"; else log "kept $WORK"; fi
  echo "cluster check: up $UP, job $JOB, metrics $METRICS, down $DOWN ($(( $(date +%s) - T0 )) s)"
  if [ "$UP$JOB$METRICS$DOWN" = okokokok ]; then exit 0; fi
  exit $(( rc == 0 ? 1 : rc ))
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for bin in /usr/sbin/sshd prometheus rsync setfacl "$RAY"; do
  command -v "$bin" >/dev/null 2>&1 || { log "missing $bin (bash deploy/install_system.sh; make setup)"; exit 2; }
done

# 1. the cluster user, its key, its shell environment (Ray runs commands through `bash --login -i`)
id "$CHECK_USER" >/dev/null 2>&1 || $SUDO useradd -m -s /bin/bash "$CHECK_USER"
HOME_DIR="$(getent passwd "$CHECK_USER" | cut -d: -f6)"
ssh-keygen -q -t ed25519 -N "" -f "$WORK/id_ed25519"
$SUDO mkdir -p "$HOME_DIR/.ssh"
$SUDO cp "$WORK/id_ed25519.pub" "$HOME_DIR/.ssh/authorized_keys"
$SUDO sh -c "printf '%s\n' 'export PATH=$VENV/bin:\$PATH' 'export RAY_AUTH_MODE=disabled' \
  'export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0' 'export RAY_USAGE_STATS_ENABLED=0' \
  'export TOKENIZERS_PARALLELISM=false' 'export HF_HUB_OFFLINE=1' > '$HOME_DIR/.stepopsd_env'"
$SUDO sh -c "grep -q stepopsd_env '$HOME_DIR/.bashrc' 2>/dev/null || sed -i '1i . ~/.stepopsd_env' '$HOME_DIR/.bashrc' 2>/dev/null || echo '. ~/.stepopsd_env' > '$HOME_DIR/.bashrc'"
$SUDO chown -R "$CHECK_USER:$CHECK_USER" "$HOME_DIR/.ssh" "$HOME_DIR/.stepopsd_env" "$HOME_DIR/.bashrc"
$SUDO chmod 700 "$HOME_DIR/.ssh"; $SUDO chmod 600 "$HOME_DIR/.ssh/authorized_keys"

# The venv's interpreter may live under a private home (pyenv in /root): give the cluster user traversal
# (x only, by ACL, removed at the end) on each directory of the way it cannot enter, and nothing else.
as_user() { $SUDO su -s /bin/bash "$CHECK_USER" -c "$1"; }
for target in "$(readlink -f "$PY")" "$REPO_ROOT/deploy"; do
  d="$(dirname "$target")"; chain=()
  while [ "$d" != / ]; do chain=("$d" "${chain[@]}"); d="$(dirname "$d")"; done
  for d in "${chain[@]}"; do
    if ! as_user "test -x '$d'"; then $SUDO setfacl -m "u:$CHECK_USER:x" "$d" && GRANTED+=("$d"); fi
  done
done
as_user "'$PY' -c 'import ray, services'" 2>/dev/null || as_user "cd '$REPO_ROOT' && '$PY' -c 'import ray'" \
  || { log "user $CHECK_USER cannot run $PY"; exit 1; }
[ ${#GRANTED[@]} -gt 0 ] && log "granted $CHECK_USER traversal (x) on: ${GRANTED[*]}"

# 2. sshd on :22 unless one answers there
if ! (exec 3<>/dev/tcp/127.0.0.1/22) 2>/dev/null; then
  $SUDO ssh-keygen -A >/dev/null
  $SUDO mkdir -p /run/sshd
  $SUDO /usr/sbin/sshd -o PidFile="$WORK/sshd.pid" -o ListenAddress=127.0.0.1 -o PasswordAuthentication=no \
    || { log "could not start sshd"; exit 1; }
  STARTED_SSHD=1
fi
ssh -q -i "$WORK/id_ed25519" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes \
  "$CHECK_USER@127.0.0.1" true || { log "ssh $CHECK_USER@127.0.0.1 with the cluster key failed"; exit 1; }

# 3. the cluster YAML: deploy/ray_cluster_local.yaml with this machine's head, user, key, ports
GCS=$(port); DASH=$(port); METRICS_PORT=$(port); AGENT=$(port); AGENT_GRPC=$(port); CLIENT=$(port); PROM=$(port)
RUN_DIR="$WORK/run"; mkdir -p "$RUN_DIR" "$WORK/ray"; $SUDO chown "$CHECK_USER" "$RUN_DIR" "$WORK/ray"
"$PY" - "$REPO_ROOT/deploy/ray_cluster_local.yaml" "$WORK/cluster.yaml" <<EOF
import json, subprocess, sys, yaml
cfg = yaml.safe_load(open(sys.argv[1]))
res = subprocess.run(["bash", "$REPO_ROOT/deploy/jobs/node_resources.sh"], capture_output=True, text=True,
                     check=True).stdout.strip()
cfg["cluster_name"] = "stepopsd-check-$(basename "$WORK")"
cfg["provider"].update(head_ip="127.0.0.1", worker_ips=[])
cfg["auth"] = {"ssh_user": "$CHECK_USER", "ssh_private_key": "$WORK/id_ed25519"}
cfg["max_workers"] = 0
cfg["file_mounts"] = {}          # the repo and its venv are used in place on this machine
cfg["setup_commands"] = []
cfg["head_start_ray_commands"] = [
    "$RAY stop --grace-period 5 || true",
    "ulimit -n 65536 || true; $RAY start --head --node-ip-address=127.0.0.1 --port=$GCS --temp-dir=$WORK/ray "
    "--dashboard-host=127.0.0.1 --dashboard-port=$DASH --metrics-export-port=$METRICS_PORT "
    "--dashboard-agent-listen-port=$AGENT --dashboard-agent-grpc-port=$AGENT_GRPC --ray-client-server-port=$CLIENT "
    "--num-cpus=4 --disable-usage-stats --autoscaling-config=~/ray_bootstrap_config.yaml "
    "--system-config='{\"metrics_report_interval_ms\": 1000}' --resources='" + res + "'",
]
yaml.safe_dump(cfg, open(sys.argv[2], "w"), sort_keys=False)
EOF
[ -s "$WORK/cluster.yaml" ] || { log "could not write the cluster YAML"; exit 1; }

# 4. ray up
log "ray up $WORK/cluster.yaml (local provider, head 127.0.0.1 as $CHECK_USER)"
UP_TRIED=1
if timeout 300 "$RAY" up -y --no-config-cache "$WORK/cluster.yaml" >"$WORK/up.log" 2>&1 \
   && timeout 60 bash -c "until curl -sf http://127.0.0.1:$DASH/api/version >/dev/null; do sleep 1; done"; then
  UP=ok
else
  log "ray up failed: $(tail -15 "$WORK/up.log")"; exit 1
fi

# 5. our own Prometheus, scraping the cluster's metrics endpoint (deploy/prometheus.yml's relabel)
cat >"$WORK/prometheus.yml" <<EOF
global: {scrape_interval: 2s, evaluation_interval: 2s}
scrape_configs:
  - job_name: ray
    static_configs: [{targets: ["127.0.0.1:$METRICS_PORT"]}]
    metric_relabel_configs:
      - {source_labels: [__name__], regex: "ray_(stepopsd_.*)", target_label: __name__, replacement: "\$1"}
EOF
prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/prom" \
  --web.listen-address="127.0.0.1:$PROM" >"$WORK/prometheus.log" 2>&1 &
PROM_PID=$!

# 6. the job: the smoke config, 2 steps, submitted like any user's job
log "ray job submit: stepopsd train --config deploy/configs/smoke_cpu.yaml (2 steps)"
cd "$REPO_ROOT"
SUB_ID="cluster-check-$(basename "$WORK")"
timeout 900 "$RAY" job submit --address "http://127.0.0.1:$DASH" --submission-id "$SUB_ID" --working-dir . \
  -- python -m services.cli train --config deploy/configs/smoke_cpu.yaml --set run.steps=2 \
  --set "run.dir=$RUN_DIR/smoke" --set "model.cache_dir=$RUN_DIR/cache" --set run.name=cluster_check \
  >"$WORK/job.log" 2>&1
STATUS=$(timeout 30 "$PY" -c "from ray.job_submission import JobSubmissionClient as C; print(C('http://127.0.0.1:$DASH').get_job_status('$SUB_ID'))" 2>&1 | grep -o 'SUCCEEDED\|FAILED\|STOPPED\|RUNNING\|PENDING' | tail -1)
if [ "$STATUS" = SUCCEEDED ] && [ -f "$RUN_DIR/smoke/summary.json" ]; then
  JOB=ok
else
  log "job status ${STATUS:-unknown}: $(tail -20 "$WORK/job.log")"
fi

# 7. did Prometheus scrape Std(Δ) from the cluster?
for _ in $(seq 60); do
  if curl -sf "http://127.0.0.1:$PROM/api/v1/query?query=stepopsd_delta_std%7Brun%3D%22cluster_check%22%7D" \
     | "$PY" -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1]) if r else sys.exit(1)' \
     >"$WORK/delta_std.txt" 2>/dev/null; then
    METRICS=ok; log "Prometheus: stepopsd_delta_std{run=\"cluster_check\"} = $(cat "$WORK/delta_std.txt")"; break
  fi
  sleep 2
done
[ "$METRICS" = ok ] || log "Prometheus never saw stepopsd_delta_std{run=\"cluster_check\"}"
# the exit trap runs ray down and prints the summary line
