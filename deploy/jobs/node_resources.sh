#!/usr/bin/env bash
# Print the custom Ray resources this machine advertises (JSON for `ray start --resources`), the ones the
# presets' actors request (resources.*.custom in deploy/configs/*.yaml; checked by
# tests/deploy/test_placement.py):
#   GPU host: one learner_gpu, rollout_gpu and teacher_gpu slot per GPU (an actor also asks GPU: 1, so the real
#             GPU count still bounds them) and one env_cpu slot per core;
#   CPU host: env_cpu slots, one per core.
# NODE_GPUS / NODE_CPUS override the detected counts (tests; heterogeneous hosts).
# A local Ray the driver starts (services/wiring.init_ray) advertises the same: services/placement.node_resources is
# this script in Python (GPUs from torch.cuda.device_count()), kept equal by tests/deploy/test_placement.py.
set -euo pipefail
NGPU="${NODE_GPUS:-$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)}"
NCPU="${NODE_CPUS:-$(nproc)}"
if [ "${NGPU:-0}" -gt 0 ]; then
  printf '{"learner_gpu": %d, "rollout_gpu": %d, "teacher_gpu": %d, "env_cpu": %d}\n' "$NGPU" "$NGPU" "$NGPU" "$NCPU"
else
  printf '{"env_cpu": %d}\n' "$NCPU"
fi
