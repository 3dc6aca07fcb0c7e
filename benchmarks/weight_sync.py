"""Weight sync, object store vs collective broadcast, measured side by side in one run:

    .venv/bin/python benchmarks/weight_sync.py [--model builtin:smollm2-135m] [--rollouts 2] [--repeats 5]

Real Ray actors: one learner (LearnerWorker) and `--rollouts` rollout workers (RolloutWorker, HF engine)
holding the same model. Each repeat publishes the learner's weights to every rollout worker both ways, in
alternating order:
  - object_store: `publish()` (a versioned packet in Ray's object store) -> `load_weights(packet)` on each;
  - collective:   `publish_meta()` + `broadcast_weights("rollout")` over a gloo process group ->
                  `receive_weights(meta)` on each (pipeline.weight_sync: collective).
Both end in the same verified load (probe check) in the engine. Printed per arm: the median seconds per sync
as the driver sees it (submit to all receivers verified), and the receivers' own load / receive seconds;
then the ratio object_store / collective.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench_env import setup  # benchmarks/ is sys.path[0] when a script here runs

ROOT = setup()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin:smollm2-135m")
    ap.add_argument("--rollouts", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--bucket-mb", type=int, default=256)
    args = ap.parse_args()

    import ray

    from actors.handle import gather
    from services.config import load_config
    from services.wiring import build_fleet, policy_model_path

    tmp = Path(tempfile.mkdtemp(prefix="bench_sync_"))
    cfg = load_config(None, [
        f"model.path={args.model}", "env.name=scripted", "sft.enabled=false", "pipeline.mode=ray",
        "pipeline.weight_sync=collective", f"rollout.num_rollout_workers={args.rollouts}", "rollout.engine=hf",
        f"rollout.vllm.weight_bucket_mb={args.bucket_mb}", "model.torch_threads=1", f"run.dir={tmp}",
        "resources.rollout.num_cpus=0.1", "resources.teacher.num_cpus=0.1", "resources.learner.num_cpus=0.1",
        "resources.env.num_cpus=0.05"])
    model_path = policy_model_path(cfg)
    fleet = build_fleet(cfg, model_path, str(tmp / "snapshot.safetensors"))
    learner, rollouts = fleet.learner, fleet.rollouts
    n_params = sum(v.numel() for v in learner.get(learner.publish()).state_dict.values())
    print(f"model {args.model}: {n_params / 1e6:.1f} M parameters ({n_params * 4 / 2**20:.0f} MiB fp32), "
          f"{len(rollouts)} rollout workers (HF engine), bucket {args.bucket_mb} MiB, {args.repeats} repeats, "
          f"{os.cpu_count()} cores")

    def object_store() -> tuple[float, list[dict]]:
        t0 = time.perf_counter()
        packet = learner.publish()
        infos = gather(rollouts, [h.load_weights(packet) for h in rollouts])
        return time.perf_counter() - t0, infos

    def collective() -> tuple[float, list[dict]]:
        t0 = time.perf_counter()
        meta = learner.publish_meta()
        sent = learner.broadcast_weights("rollout")
        infos = gather(rollouts, [h.receive_weights(meta, "rollout") for h in rollouts])
        ray.get(sent)
        return time.perf_counter() - t0, infos

    arms = {"object_store": object_store, "collective": collective}
    for fn in arms.values():  # warm-up (first allocation / connection)
        fn()
    times: dict[str, list[float]] = {k: [] for k in arms}
    recv: dict[str, list[float]] = {k: [] for k in arms}
    for rep in range(args.repeats):
        order = list(arms) if rep % 2 == 0 else list(reversed(arms))
        for name in order:
            sec, infos = arms[name]()
            times[name].append(sec)
            recv[name].append(max(float(i.get("receive_seconds", i["seconds"])) for i in infos))
            assert all(i["ok"] for i in infos), infos
    print(f"{'arm':<14}{'s/sync (median)':>18}{'min':>8}{'max':>8}{'receiver load/receive s':>26}")
    for name in arms:
        t = times[name]
        print(f"{name:<14}{statistics.median(t):>18.3f}{min(t):>8.3f}{max(t):>8.3f}"
              f"{statistics.median(recv[name]):>26.3f}")
    ratio = statistics.median(times["object_store"]) / statistics.median(times["collective"])
    print(f"ratio object_store / collective (median s per sync, all receivers verified): {ratio:.2f}x")
    fleet.shutdown()
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
