"""Shared pieces of the sharded-learner tests: a tiny random Qwen2, a scored batch of mixed lengths, and a
gloo world of spawned processes (torch.multiprocessing; the ranks are real processes, the collectives real)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch


def tiny_qwen2(seed: int = 0, layers: int = 2, vocab: int = 256) -> torch.nn.Module:
    """A random Qwen2 with tied embeddings (as builtin:tiny-qwen2, smaller): deterministic in `seed`."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                      max_position_embeddings=512, attn_implementation="eager")
    return Qwen2ForCausalLM(cfg).float()


def mixed_batch(lengths: list[int], vocab: int = 256, seed: int = 0) -> SimpleNamespace:
    """A scored batch (what Learner.update reads) of rows with the given unpadded `lengths`, right-padded: the
    last ~third of each row generated, GRPO-like advantages of alternating sign and varying size."""
    g = torch.Generator().manual_seed(seed)
    B, T = len(lengths), max(lengths)
    ids = torch.randint(1, vocab, (B, T), generator=g)
    attn = torch.zeros(B, T, dtype=torch.bool)
    gen = torch.zeros(B, T, dtype=torch.bool)
    for i, n in enumerate(lengths):
        attn[i, :n] = True
        gen[i, n - max(1, n // 3) : n] = True
    ids = ids.masked_fill(~attn, 0)
    logp = torch.where(gen, -torch.rand(B, T, generator=g) * 3, torch.zeros(B, T))  # (B, T)
    sign = torch.tensor([(1.0 if i % 2 else -1.0) * (0.5 + i / B) for i in range(B)])  # (B,)
    adv = sign[:, None] * gen.float()  # (B, T)
    traj = SimpleNamespace(input_ids=ids, generated_mask=gen, attention_mask=attn, batch_size=B, behaviour_logp=logp)
    return SimpleNamespace(traj=traj, shaped_advantages=adv)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _entry(rank: int, world: int, port: int, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


def spawn(fn: Callable[..., Any], world: int, *args: Any) -> None:
    """Run `fn(rank, world, *args)` in `world` processes joined in one gloo group; a failure in any raises."""
    import torch.multiprocessing as mp

    mp.spawn(_entry, args=(world, free_port(), fn, args), nprocs=world, join=True)


def dist_all_reduce(tensors: list[torch.Tensor]) -> None:
    """The learner's `all_reduce` over the default group (sum, in place)."""
    import torch.distributed as dist

    for t in tensors:
        dist.all_reduce(t)
