"""Will a config's fleet be placed on a cluster? Static check of the actors' resource requests against a
`ray up` cluster YAML (its `available_node_types`), and `stepopsd cluster check`.

Each actor must fit on ONE node (Ray places an actor on a single node): its CPU, GPU and custom resources
must all be offered by a node type. The whole fleet is packed first-fit-decreasing onto the nodes the cluster
can have (the head once, each worker type up to its `max_workers`, all worker types together up to the
cluster's `max_workers`). A request for a resource no node type offers, or more actors than the nodes can
hold, is reported by role and index -- on a live cluster those actors would stay pending forever.

The same check runs on the live cluster before the driver builds a fleet (`preflight`, from
services.wiring.build_fleet): `ray.cluster_resources()` per node against `actor_requests(cfg)`, failing in
seconds with one line naming the actor and the missing resource, instead of actors that wait forever and a
`ray.get` without a timeout. A local Ray started by the driver advertises what deploy/jobs/node_resources.sh
would (`local_resources`), and `wait_started` bounds the actors' start-up (`pipeline.start_timeout_s`), naming
the actor that did not start. `stepopsd cluster check` also prints the memory plan (services/memplan.py).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.config import ActorResources, Config


class PlacementError(ValueError):
    """The fleet cannot be placed: which actor, what it asks, what the nodes offer."""


def request_of(res: ActorResources) -> dict[str, float]:
    d = {"CPU": res.num_cpus, "GPU": res.num_gpus, **res.custom}
    return {k: float(v) for k, v in d.items() if v}


def actor_requests(cfg: Config) -> list[tuple[str, int, dict[str, float]]]:
    """(role, index, resources) of every actor `services.wiring.build_fleet` creates for `cfg` (env pools:
    `env.num_env_workers` per rollout worker)."""
    r = cfg.resources
    n_roll, n_env = cfg.rollout.num_rollout_workers, cfg.env.num_env_workers
    out = [("env", i, request_of(r.env)) for i in range(n_roll * n_env)]
    out += [("rollout", i, request_of(r.rollout)) for i in range(n_roll)]
    out += [("teacher", i, request_of(r.teacher)) for i in range(cfg.stepopsd.num_teacher_workers)]
    out += [("learner", i, request_of(r.learner)) for i in range(cfg.learner.num_workers)]
    return out


@dataclass
class Node:
    kind: str
    free: dict[str, float]
    actors: list[str] = field(default_factory=list)


def cluster_nodes(cluster: dict[str, Any]) -> list[Node]:
    """The most nodes a cluster YAML can bring up: the head, then each worker type max_workers times."""
    types = cluster.get("available_node_types") or {}
    if not types:
        raise PlacementError("cluster config has no available_node_types (a local-provider YAML: its nodes' "
                             "resources come from their `ray start --resources`, see deploy/jobs/node_resources.sh)")
    head = cluster.get("head_node_type")
    if head not in types:
        raise PlacementError(f"head_node_type {head!r} is not one of available_node_types {sorted(types)}")
    nodes = [Node(str(head), {k: float(v) for k, v in (types[head].get("resources") or {}).items()})]
    for name, t in types.items():
        if name == head:
            continue
        n = int(t.get("max_workers", cluster.get("max_workers", 0)))
        nodes += [Node(name, {k: float(v) for k, v in (t.get("resources") or {}).items()}) for _ in range(n)]
    return nodes


def _fits(free: dict[str, float], req: dict[str, float]) -> bool:
    return all(free.get(k, 0.0) + 1e-9 >= v for k, v in req.items())


def pack(requests: list[tuple[str, int, dict[str, float]]], nodes: list[Node]) -> None:
    """First-fit-decreasing packing of the requests onto `nodes` (their `free` is used up, `actors` filled);
    raises PlacementError naming the first actor that cannot be placed."""
    order = sorted(requests, key=lambda r: (-r[2].get("GPU", 0.0), -r[2].get("CPU", 0.0), r[0], r[1]))
    for role, i, req in order:
        node = next((n for n in nodes if _fits(n.free, req)), None)
        if node is None:
            err = PlacementError(f"{role} actor {i} ({req}) does not fit on any node: the cluster's nodes "
                                 f"(head + up to max_workers per type) are full or too small")
            err.actor = (role, i, req)  # type: ignore[attr-defined]
            raise err
        for k, v in req.items():
            node.free[k] -= v
        node.actors.append(f"{role}-{i}")


def place(requests: list[tuple[str, int, dict[str, float]]], cluster: dict[str, Any]) -> list[Node]:
    """First-fit-decreasing packing of the requests; raises PlacementError naming the first actor that cannot
    be placed. Returns the nodes used (with what they hold)."""
    nodes = cluster_nodes(cluster)
    offered = sorted({k for n in nodes for k in n.free})
    for role, i, req in requests:  # a resource nobody offers: the clearest message first
        missing = [k for k in req if k not in offered]
        if missing:
            raise PlacementError(f"{role} actor {i} asks for {missing} ({req}); no node type offers it "
                                 f"(offered: {offered}) -- it would stay pending forever")
    pack(requests, nodes)
    used = [n for n in nodes if n.actors]
    workers = sum(1 for n in used if n is not nodes[0])  # nodes[0] is the head
    cap = cluster.get("max_workers")
    if cap is not None and workers > int(cap):
        raise PlacementError(f"the fleet needs {workers} worker nodes but the cluster's max_workers is {cap}")
    return used


def placed_on(used: list[Node]) -> dict[tuple[str, int], str]:
    """(role, index) -> node type, from `place`'s nodes."""
    out = {}
    for n in used:
        for a in n.actors:
            role, i = a.rsplit("-", 1)
            out[(role, int(i))] = n.kind
    return out


# ------------------------------------------------------------------------------------------ the live cluster
class PreflightError(PlacementError):
    """The live cluster cannot place the fleet (one line: the actor, what it asks, what the cluster lacks)."""


class ActorStartTimeout(RuntimeError):
    """An actor did not start (placed and its __init__ done) within pipeline.start_timeout_s."""


def node_resources(gpus: int, cpus: int) -> dict[str, float]:
    """The custom resources deploy/jobs/node_resources.sh prints for a host with `gpus` GPUs and `cpus` cores:
    learner_gpu, rollout_gpu, teacher_gpu per GPU and env_cpu per core on a GPU host; env_cpu per core on a
    CPU host (tests/deploy/test_placement.py keeps the two equal)."""
    out = {"learner_gpu": gpus, "rollout_gpu": gpus, "teacher_gpu": gpus} if gpus > 0 else {}
    return {k: float(v) for k, v in {**out, "env_cpu": cpus}.items()}


def local_resources() -> dict[str, float]:
    """What a local Ray started by the driver advertises: node_resources.sh's resources for this host (GPUs
    from torch.cuda.device_count(), cores from os.cpu_count(); NODE_GPUS / NODE_CPUS override, as there)."""
    gpus = os.environ.get("NODE_GPUS")
    if gpus is None:
        import torch

        gpus = str(torch.cuda.device_count())
    return node_resources(int(gpus), int(os.environ.get("NODE_CPUS") or os.cpu_count() or 1))


def _fmt(res: dict[str, float]) -> str:
    def v(k: str, x: float) -> str:
        if k in ("memory", "object_store_memory"):
            return f"{x / 2**30:.1f} GiB"
        return f"{x:g}"

    return ", ".join(f"{k} {v(k, x)}" for k, x in sorted(res.items()) if not k.startswith(("node:", "accelerator_type:")))


def _req(req: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k!r}: {v:g}" for k, v in req.items()) + "}"


def live_nodes() -> list[Node]:
    """The alive nodes of the Ray this process is connected to, with their TOTAL resources (what other work
    holds now is released in time; an actor asking more than a node's total never starts)."""
    import ray

    out = []
    for n in ray.nodes():
        if n.get("Alive") or n.get("alive"):
            res = {k: float(v) for k, v in (n.get("Resources") or {}).items() if not k.startswith("node:")}
            out.append(Node(str(n.get("NodeManagerAddress", "?")), res))
    return out


def autoscaler_node_types(path: str = "~/ray_bootstrap_config.yaml") -> list[Node] | None:
    """The nodes an autoscaler may still bring up: the node types of the cluster config `ray up` leaves on the
    head (~/ray_bootstrap_config.yaml, how Ray Tune tells an autoscaling cluster: ray/tune/execution/
    cluster_info.py), up to max_workers of each; None when there is no such file (nothing more will come)."""
    p = Path(path).expanduser()
    if not p.is_file():
        return None
    import yaml

    try:
        return cluster_nodes(yaml.safe_load(p.read_text()) or {})
    except (PlacementError, yaml.YAMLError, AttributeError, TypeError, ValueError):
        return None


def preflight_problem(requests: list[tuple[str, int, dict[str, float]]], nodes: list[Node]) -> str | None:
    """The one-line reason `requests` cannot all start on `nodes`, or None when they can: first an actor asking
    a resource no node has (GPU actors first), then the first actor the packing cannot place."""
    totals: dict[str, float] = {}
    for n in nodes:
        for k, x in n.free.items():
            totals[k] = totals.get(k, 0.0) + x
    order = sorted(requests, key=lambda r: (-r[2].get("GPU", 0.0), r[0] == "env", r[0], r[1]))
    for role, i, req in order:
        missing = [k for k in req if k not in totals]
        if missing:
            what = ", ".join(repr(k) for k in missing)
            hint = ("start GPU nodes with `ray start --resources \"$(deploy/jobs/node_resources.sh)\"`"
                    if "GPU" in missing else "start nodes with deploy/jobs/node_resources.sh")
            return (f"preflight: {role} {i} asks {_req(req)}; the cluster offers no {what} (has: {_fmt(totals)}): "
                    f"{hint} or change resources.{role}")
    try:
        pack(requests, [Node(n.kind, dict(n.free)) for n in nodes])
    except PlacementError as e:
        role, i, req = e.actor  # type: ignore[attr-defined]
        return (f"preflight: {role} {i} asks {_req(req)}; no node can hold it with the rest of the fleet "
                f"({len(requests)} actors; cluster: {len(nodes)} node(s), {_fmt(totals)}): add nodes, or lower "
                f"resources.{role} or the number of {role} actors")
    return None


def preflight(cfg: Config, *, started_here: bool, timeout_s: float | None = None,
              log: Callable[[str], None] = print, poll_s: float = 5.0) -> None:
    """Before the fleet is built: every actor of `cfg` can be placed on the live cluster's nodes, or raise
    PreflightError (one line) -- at once when nothing more can come (a local Ray started here, or no autoscaler
    config on this host); when an autoscaler's node types could offer it, after waiting up to `timeout_s`
    (default pipeline.start_timeout_s) for those nodes to join."""
    reqs = actor_requests(cfg)
    problem = preflight_problem(reqs, live_nodes())
    if problem is None:
        return
    launchable = None if started_here else autoscaler_node_types()
    if launchable is None or preflight_problem(reqs, launchable) is not None:
        raise PreflightError(problem)
    timeout_s = cfg.pipeline.start_timeout_s if timeout_s is None else timeout_s
    log(f"{problem} -- waiting up to {timeout_s:g} s for the autoscaler's nodes")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(min(poll_s, max(deadline - time.monotonic(), 0.0)))
        problem = preflight_problem(reqs, live_nodes())
        if problem is None:
            return
    raise PreflightError(f"{problem} (after waiting {timeout_s:g} s for the autoscaler)")


def actor_state(handle: Any) -> str:
    """Where a Ray actor is in its start, as the GCS tells it (PENDING_CREATION covers both an actor no node
    could take yet and one whose __init__ is running: a worker process (pid) tells them apart)."""
    try:
        import ray

        info = ray._private.state.actors(handle._actor_id.hex())
    except Exception:  # noqa: BLE001 -- a diagnostic only
        return "state unknown"
    state, pid = str(info.get("State", "unknown")), int(info.get("Pid") or 0)
    ip = (info.get("Address") or {}).get("IPAddress") or "?"
    if state == "PENDING_CREATION" and not pid:
        return "PENDING_CREATION: not placed, no node has its resources free"
    if state == "PENDING_CREATION":
        return f"PENDING_CREATION: placed on {ip} (pid {pid}), its __init__ still running (model download, engine start?)"
    return {"DEPENDENCIES_UNREADY": "DEPENDENCIES_UNREADY: its arguments are not ready",
            "RESTARTING": "RESTARTING after its process died"}.get(state, state)


def wait_started(members: list[tuple[str, int, Any]], timeout_s: float,
                 requests: dict[tuple[str, int], dict[str, float]] | None = None) -> None:
    """Wait until every actor of `members` ((role, index, Handle)) has started -- placed and its __init__ done
    (a cheap `describe()` call answered; an __init__ that raised counts as started: its error surfaces at the
    first real call) -- or raise ActorStartTimeout naming the first one that has not, and where it is."""
    import ray

    refs = {h.describe(): (role, i, h) for role, i, h in members}
    _, pending = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
    if not pending:
        return
    role, i, h = refs[pending[0]]
    req = (requests or {}).get((role, i))
    names = ", ".join(f"{refs[r][0]} {refs[r][1]}" for r in pending[:8]) + (" ..." if len(pending) > 8 else "")
    raise ActorStartTimeout(f"start-up: {role} {i} did not start within pipeline.start_timeout_s = {timeout_s:g} s "
                            f"({actor_state(h.target)}{'; asks ' + _req(req) if req else ''}); not started: {names}")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cluster", help="check that a config's fleet can be placed on a ray up cluster YAML, and "
                       "print its GPU memory plan")
    p.add_argument("action", choices=["check"])
    p.add_argument("--config", default=None, help="YAML config file")
    p.add_argument("--cluster", default="ray_cluster.yaml", help="ray up cluster YAML (default: ray_cluster.yaml)")
    p.add_argument("--gpu-memory-gib", type=float, default=None,
                   help="GPU memory of every GPU node (node types without an InstanceType in "
                        "services/memplan.GPU_MIB, e.g. a local-provider cluster's hosts)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    import yaml

    from services.config import load_config
    from services.memplan import detect_code, format_plan, memory_plan

    cfg = load_config(args.config, args.overrides)
    cluster = yaml.safe_load(Path(args.cluster).read_text())
    reqs = actor_requests(cfg)
    try:
        used = place(reqs, cluster)
    except PlacementError as e:
        print(f"cluster check: {e}", file=sys.stderr)
        return 1
    for n in used:
        print(f"  {n.kind:<12} {', '.join(n.actors)}")
    print(f"cluster check: {len(reqs)} actors placed on {len(used)} nodes of {args.cluster}")
    code = detect_code()
    plans = memory_plan(cfg, cluster, placed_on(used), code, getattr(args, "gpu_memory_gib", None))
    for line in format_plan(plans, code):
        print(line)
    bad = [p for p in plans if not p.fits]
    for p in bad:
        print(f"cluster check: {p.name()} does not fit on {p.node_type}: {p.problem}", file=sys.stderr)
    if not bad and plans:
        print(f"cluster check: every GPU actor fits its node's GPU memory ({len(plans)} plans)")
    return 1 if bad else 0
