"""`benchmarks/learner_update.py --strategies`: the learner's update with W data-parallel ranks (real processes,
gloo), four arms side by side in one run -- learner.strategy replicate | fsdp x micro-batches by rows
(micro_batch_size) | by token budget (max_tokens_per_micro_batch) -- on a batch of mixed episode lengths (some
rows >= 1.5k tokens, most short: what multi-turn agent episodes give), fp32, no gradient checkpointing. Per arm: seconds per update (the slowest
rank: the step waits for it), real (unpadded) tokens per second, the tokens each rank forwarded with padding, and
per rank the parameter + AdamW bytes it holds and its peak RSS. Printed: the fsdp/replicate memory ratio (1/W
expected for the sharded state) and the token-budget speed-up.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

ARMS = {  # name -> (strategy, token budget?)
    "replicate, rows": ("replicate", False),
    "replicate, token budget": ("replicate", True),
    "fsdp, rows": ("fsdp", False),
    "fsdp, token budget": ("fsdp", True),
}


def mixed_lengths(rows: int) -> list[int]:
    """Episode lengths: a quarter of the rows long (1.5k-1.7k tokens), the rest 100-400 tokens."""
    long = [1536 + 64 * (i % 3) for i in range(max(1, rows // 4))]
    short = [100 + (i * 73) % 300 for i in range(rows - len(long))]
    out = []
    for i in range(rows):  # interleaved, as a batch of GRPO groups would hold them
        out.append(long.pop() if i % 4 == 0 and long else short.pop() if short else long.pop())
    return out


def scored_batch(lengths: list[int], vocab: int, seed: int = 0) -> Any:
    """A ScoredBatch-like record (what Learner.update reads) of right-padded rows of `lengths` tokens, the last
    third of each generated, advantages +-1."""
    from types import SimpleNamespace

    import torch

    g = torch.Generator().manual_seed(seed)
    B, T = len(lengths), max(lengths)
    attn = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]  # (B, T)
    gen = attn & (torch.arange(T)[None, :] >= torch.tensor([n - n // 3 for n in lengths])[:, None])  # (B, T)
    ids = torch.randint(0, vocab, (B, T), generator=g).masked_fill(~attn, 0)
    logp = torch.where(gen, -torch.rand(B, T, generator=g) * 3, torch.zeros(B, T))
    adv = torch.tensor([1.0 if i % 2 else -1.0 for i in range(B)])[:, None] * gen.float()
    traj = SimpleNamespace(input_ids=ids, generated_mask=gen, attention_mask=attn, batch_size=B, behaviour_logp=logp)
    return SimpleNamespace(traj=traj, shaped_advantages=adv)


def _rank(rank: int, world: int, port: int, path: str, arm: str, lengths: list[int], mbs: int, budget: int,
          repeats: int, threads: int, out: str) -> None:
    import torch
    import torch.distributed as dist
    from bench_env import peak_rss  # benchmarks/ is on the spawned rank's sys.path too
    from torch.distributed.device_mesh import DeviceMesh

    from actors.models import load_hf_model
    from learner.fsdp import local_state_bytes, shard_learner
    from learner.learner import Learner
    from learner.microbatch import padded_tokens, plan_micro_batches

    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)

    def all_reduce(ts: list[torch.Tensor]) -> None:
        for t in ts:
            dist.all_reduce(t)

    strategy, by_tokens = ARMS[arm]
    model = load_hf_model(path, "float32")  # no gradient checkpointing: the CPU run is compute-bound already
    lrn = Learner(model, lr=1e-5, micro_batch_size=mbs, skip_zero_advantage=False,
                  max_tokens_per_micro_batch=budget if by_tokens else None)
    if strategy == "fsdp":
        shard_learner(lrn, DeviceMesh.from_group(dist.group.WORLD, "cpu"), rank=rank, world=world,
                      all_reduce=all_reduce)
    else:
        lrn.set_data_parallel(rank, world, all_reduce)
    sb = scored_batch(lengths, model.config.vocab_size)
    times = []
    for _ in range(repeats):
        dist.barrier()
        t0 = time.perf_counter()
        lrn.update(sb)
        dist.barrier()
        times.append(time.perf_counter() - t0)

    state = local_state_bytes(lrn.model, lrn.optimizer)
    lens = sb.traj.attention_mask.sum(-1)
    plan = plan_micro_batches(torch.arange(len(lengths)), lens, rank=rank, world=world, micro_batch_size=mbs,
                              max_tokens=budget if by_tokens else None, equalize=strategy == "fsdp")
    Path(out, f"{rank}.json").write_text(json.dumps({
        "seconds": min(times), "state_bytes": state, "padded_tokens": padded_tokens(plan, lens),
        "peak_rss": peak_rss()}))
    dist.destroy_process_group()


def run(path: str, model_name: str, rows: int, repeats: int, threads: int, world: int = 2, mbs: int = 4,
        budget: int = 2048) -> int:
    import tempfile

    import torch.multiprocessing as mp

    lengths = mixed_lengths(rows)
    real = sum(lengths)
    print(f"learner update by strategy, W = {world} gloo ranks, {model_name}, {rows} rows of lengths {lengths} "
          f"({real} real tokens), micro_batch_size {mbs} | max_tokens_per_micro_batch {budget}, "
          f"{threads} thread(s) per rank, best of {repeats}:", flush=True)
    res: dict[str, list[dict[str, float]]] = {}
    for arm in ARMS:
        with tempfile.TemporaryDirectory() as out:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            t0 = time.perf_counter()
            mp.spawn(_rank, args=(world, port, path, arm, lengths, mbs, budget, repeats, threads, out),
                     nprocs=world, join=True)
            res[arm] = [json.loads(Path(out, f"{r}.json").read_text()) for r in range(world)]
        print(f"  ({arm}: {time.perf_counter() - t0:.0f} s wall with start-up)", flush=True)
    print(f"  {'arm':<24} {'s/update':>9} {'tok/s':>7} {'padded tok/rank':>16} {'param+AdamW/rank':>17} "
          f"{'peak RSS/rank':>14}")
    for arm, ranks in res.items():
        sec = max(r["seconds"] for r in ranks)
        pads = "/".join(str(int(r["padded_tokens"])) for r in ranks)
        state = "/".join(f"{r['state_bytes'] / 2**20:.0f}" for r in ranks)
        rss = "/".join(f"{r['peak_rss'] / 2**30:.2f}" for r in ranks)
        print(f"  {arm:<24} {sec:9.1f} {real / sec:7.0f} {pads:>16} {state + ' MiB':>17} {rss + ' GiB':>14}")
    ratio = res["fsdp, rows"][0]["state_bytes"] / res["replicate, rows"][0]["state_bytes"]
    print(f"  per-rank parameter + AdamW bytes, fsdp / replicate: {ratio:.3f} (1/W = {1 / world:.3f})")
    for s in ("replicate", "fsdp"):
        rows_s = max(r["seconds"] for r in res[f"{s}, rows"])
        tok_s = max(r["seconds"] for r in res[f"{s}, token budget"])
        print(f"  token-budget speed-up, {s}: x{rows_s / tok_s:.2f} ({rows_s:.1f} s -> {tok_s:.1f} s per update)")
    return 0


def main() -> int:
    """The same as `learner_update.py --strategies` (its command line)."""
    from learner_update import model_and_args  # benchmarks/ is sys.path[0] when a script here runs

    args, path = model_and_args(__doc__ or "")
    return run(path, args.model, args.rows, args.repeats, max(1, args.threads // 2))


if __name__ == "__main__":
    from bench_env import setup

    setup()
    raise SystemExit(main())
