"""Hooks `envs.registry` calls for `env.name: scripted`."""

from __future__ import annotations

from functools import partial

from envs.base import EnvSpec, TextProtocol
from envs.pool import SerialEnvPool
from envs.scripted.config import ScriptedEnvConfig
from envs.scripted.env import ScriptedEnv, ScriptedProtocol


def _opts(spec: EnvSpec) -> ScriptedEnvConfig:
    return spec.options if isinstance(spec.options, ScriptedEnvConfig) else ScriptedEnvConfig()


def make_pool(spec: EnvSpec, num_envs: int, split: str = "train") -> SerialEnvPool:
    o = _opts(spec)  # one task set serves every split
    return SerialEnvPool(partial(ScriptedEnv, o.num_tasks, o.max_turns, o.step_sleep_s), num_envs)


def protocol(spec: EnvSpec) -> TextProtocol:
    p = ScriptedProtocol()
    return TextProtocol(p.system_prompt, p.parse, p.hindsight_block, p.teacher_user_message)


def task_ids(spec: EnvSpec, split: str = "train") -> list[str]:
    return ScriptedEnv(_opts(spec).num_tasks).task_ids()


def demonstrations(spec: EnvSpec, split: str = "train", limit: int | None = None) -> list[tuple[str, list[str]]]:
    # 36 characters: an even length, so the scripted replay wins
    turn = "<think>easy task</think><action>go</action>"[:36]
    return [(t, [turn]) for t in task_ids(spec, split)[: limit or None]]
