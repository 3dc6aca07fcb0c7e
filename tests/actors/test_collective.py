"""The run's torch.distributed world on real processes (gloo, no Ray): the rendezvous address is Ray's node IP,
the timeout comes from the config, and a late receiver or a silent source is a named CollectiveTimeout within
the configured seconds (not a 600 s hang or a transport's anonymous timeout)."""

from __future__ import annotations

import multiprocessing as mp
import socket
import time

import pytest
import torch

TIMEOUT_S = 2.0


def test_rendezvous_address_is_rays_node_ip_not_the_host_name(monkeypatch):
    import ray

    from actors.collective import free_address

    assert free_address().rsplit(":", 1)[0] == ray.util.get_node_ip_address()
    # a Debian-style host: the host name resolves to 127.0.1.1, which no other node reaches
    monkeypatch.setattr(socket, "gethostbyname", lambda name: "127.0.1.1")
    monkeypatch.setattr(ray.util, "get_node_ip_address", lambda: "10.11.12.13")
    host, port = free_address().rsplit(":", 1)
    assert host == "10.11.12.13" and int(port) > 0


def test_world_spec_takes_the_configured_timeout():
    from types import SimpleNamespace

    from services.config import load_config
    from services.wiring import world_spec

    cfg = load_config(None, ["pipeline.collective_timeout_s=2.5", "learner.num_workers=2"])
    fleet = SimpleNamespace(learners=[0, 1], rollouts=[0], teachers=[0])
    assert world_spec(fleet, cfg, "10.0.0.1:1234").timeout_s == 2.5  # type: ignore[arg-type]
    assert load_config(None, []).pipeline.collective_timeout_s == 600


def test_the_timeout_error_survives_pickling():  # Ray hands an actor's exception to the driver pickled
    import pickle

    from actors.collective import CollectiveTimeout

    e = pickle.loads(pickle.dumps(CollectiveTimeout("rollout", 0, 2.0, [1, 2], "check in")))
    assert isinstance(e, CollectiveTimeout) and e.missing == [1, 2] and "rank(s) [1, 2]" in str(e)


def _member(rank: int, address: str, results, go, done) -> None:
    """Rank 0 broadcasts twice (rank 1 receives only the first); rank 1 then waits for a third broadcast that
    never comes. Each puts (rank, event, detail, seconds) on `results`; rank 0 stays in the world till rank 1
    is done (its source must be alive-and-silent, not gone)."""
    from actors.collective import Collective, GroupSpec, meta_of

    torch.manual_seed(0)
    sd = {"a": torch.randn(3, 4), "b": torch.arange(5, dtype=torch.int64), "c": torch.randn(2).to(torch.bfloat16)}
    meta = meta_of(sd, 1, [])
    spec = GroupSpec(address=address, world_size=2, groups={"rollout": [0, 1]}, timeout_s=TIMEOUT_S)
    col = Collective(spec, rank)
    try:
        if rank == 0:
            col.broadcast_state(sd, meta, "rollout")
            results.put((0, "sent", "", 0.0))
            t0 = time.monotonic()
            try:
                col.broadcast_state(sd, meta, "rollout")  # rank 1 never checks in
                results.put((0, "no error", "", time.monotonic() - t0))
            except Exception as e:  # noqa: BLE001 -- reported to the test
                results.put((0, type(e).__name__, str(e), time.monotonic() - t0))
            go.set()
            done.wait(60)
        else:
            got = col.receive_state(meta, "rollout")
            same = all(torch.equal(got[k], v) for k, v in sd.items())
            results.put((1, "received", str(same), 0.0))
            go.wait(60)  # rank 0 has given up on its second broadcast: now wait for one that never comes
            t0 = time.monotonic()
            try:
                col.receive_state(meta, "rollout")
                results.put((1, "no error", "", time.monotonic() - t0))
            except Exception as e:  # noqa: BLE001
                results.put((1, type(e).__name__, str(e), time.monotonic() - t0))
            done.set()
    finally:
        col.close()


@pytest.mark.timeout(120)
def test_late_receiver_and_silent_source_fail_with_a_named_timeout():
    from actors.collective import free_address

    ctx = mp.get_context("spawn")
    results, go, done = ctx.Queue(), ctx.Event(), ctx.Event()
    address = free_address()
    procs = [ctx.Process(target=_member, args=(r, address, results, go, done), daemon=True) for r in range(2)]
    for p in procs:
        p.start()
    try:
        got = {}
        for _ in range(4):
            rank, event, detail, seconds = results.get(timeout=90)
            got.setdefault(rank, []).append((event, detail, seconds))
    finally:
        for p in procs:
            p.join(15)
            if p.is_alive():
                p.kill()
    assert got[0][0][0] == "sent" and got[1][0] == ("received", "True", 0.0)
    event, detail, seconds = got[0][1]
    print(f"sender: {event}: {detail} ({seconds:.1f} s)")
    assert event == "CollectiveTimeout", (event, detail)
    assert "'rollout'" in detail and "rank 0 waited" in detail and "[1]" in detail and "check in" in detail
    assert TIMEOUT_S - 0.1 <= seconds < TIMEOUT_S + 5
    event, detail, seconds = got[1][1]
    print(f"receiver: {event}: {detail} ({seconds:.1f} s)")
    assert event == "CollectiveTimeout", (event, detail)
    assert "rank 1 waited" in detail and "[0]" in detail and "send" in detail
    assert seconds < TIMEOUT_S + 5
