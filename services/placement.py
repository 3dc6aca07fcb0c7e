"""Will a config's fleet be placed on a cluster? Static check of the actors' resource requests against a
`ray up` cluster YAML (its `available_node_types`), and `stepopsd cluster check`.

Each actor must fit on ONE node (Ray places an actor on a single node): its CPU, GPU and custom resources
must all be offered by a node type. The whole fleet is packed first-fit-decreasing onto the nodes the cluster
can have (the head once, each worker type up to its `max_workers`, all worker types together up to the
cluster's `max_workers`). A request for a resource no node type offers, or more actors than the nodes can
hold, is reported by role and index -- on a live cluster those actors would stay pending forever.
"""

from __future__ import annotations

import argparse
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
                             "resources come from their `ray start --resources`, see deploy/jobs/node_resources.py)")
    head = cluster.get("head_node_type")
    if head not in types:
        raise PlacementError(f"head_node_type {head!r} is not one of available_node_types {sorted(types)}")
    nodes = [Node(head, {k: float(v) for k, v in (types[head].get("resources") or {}).items()})]
    for name, t in types.items():
        if name == head:
            continue
        n = int(t.get("max_workers", cluster.get("max_workers", 0)))
        nodes += [Node(name, {k: float(v) for k, v in (t.get("resources") or {}).items()}) for _ in range(n)]
    return nodes


def _fits(free: dict[str, float], req: dict[str, float]) -> bool:
    return all(free.get(k, 0.0) + 1e-9 >= v for k, v in req.items())


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
    order = sorted(requests, key=lambda r: (-r[2].get("GPU", 0.0), -r[2].get("CPU", 0.0), r[0], r[1]))
    for role, i, req in order:
        node = next((n for n in nodes if _fits(n.free, req)), None)
        if node is None:
            raise PlacementError(f"{role} actor {i} ({req}) does not fit on any node: the cluster's nodes "
                                 f"(head + up to max_workers per type) are full or too small")
        for k, v in req.items():
            node.free[k] -= v
        node.actors.append(f"{role}-{i}")
    used = [n for n in nodes if n.actors]
    workers = sum(1 for n in used if n is not nodes[0])  # nodes[0] is the head
    cap = cluster.get("max_workers")
    if cap is not None and workers > int(cap):
        raise PlacementError(f"the fleet needs {workers} worker nodes but the cluster's max_workers is {cap}")
    return used


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cluster", help="check that a config's fleet can be placed on a ray up cluster YAML")
    p.add_argument("action", choices=["check"])
    p.add_argument("--config", default=None, help="YAML config file")
    p.add_argument("--cluster", default="ray_cluster.yaml", help="ray up cluster YAML (default: ray_cluster.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    import yaml

    from services.config import load_config

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
    return 0
