#!/usr/bin/env bash
# System packages the deploy/ tests and the console dashboard need: Debian's prometheus (server + promtool;
# 2.x still serves console templates), chromium (headless screenshot test) and openssh-server (`ray up` over
# ssh to 127.0.0.1 in the local cluster check). Idempotent: installs only
# what is missing, so `make test` can call it every time. Needs root (or sudo) on Debian/Ubuntu.
# `install_system.sh prometheus` installs Prometheus alone (`make prometheus`).
set -euo pipefail
need=()
command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || need+=(prometheus)
if [ "${1:-}" = "prometheus" ]; then
  if [ ${#need[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -q && $SUDO apt-get install -y -q prometheus
  fi
  exit 0
fi
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# sshd for the `ray up` check against this machine (deploy/jobs/local_cluster_check.sh, local node provider)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v rsync >/dev/null 2>&1 || need+=(rsync)  # ray up copies its bootstrap config to the head with rsync
command -v setfacl >/dev/null 2>&1 || need+=(acl)  # lets the check's cluster user reach a venv under a private home
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q "${need[@]}"
# The package may start a system-wide Prometheus on :9090 where an init system exists; the tests and
# deploy/README.md run their own, so leave a running one alone but do not depend on it.
echo "installed: ${need[*]}"
