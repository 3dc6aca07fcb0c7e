"""What an error says to the user, wherever it was raised: its one-line message, whether it is bad input (exit 2)
or a failure, and the bad input Ray can only report as text (an actor's `__init__`). Shared by the CLI, the child
processes (services/child.py) and the driver (services/train.py)."""

from __future__ import annotations

from typing import Literal


def one_line(e: BaseException) -> str:
    """An error's own message on one line: for a RayTaskError wrapping an error raised inside an actor, that of
    its cause, without the remote traceback."""
    cause = getattr(e, "cause", None)
    return " ".join(str(cause if isinstance(cause, BaseException) else e).split())


def bad_input_kind(e: BaseException) -> Literal["config", "input"] | None:
    """"config" for a ConfigError, "input" for an InputError -- `e` itself or the cause a RayTaskError wraps --
    else None (a failure, not bad input)."""
    from envs.base import InputError
    from services.config import ConfigError

    for x in (e, getattr(e, "cause", None)):
        if isinstance(x, ConfigError):
            return "config"
        if isinstance(x, InputError):
            return "input"
    return None


def add_note(e: BaseException, note: str) -> None:
    """`e.add_note(note)`; on Python 3.10 (no add_note) the same `__notes__` list, which 3.10's traceback does not
    print but our messages and tests read."""
    if hasattr(e, "add_note"):
        e.add_note(note)
    else:
        e.__notes__ = [*getattr(e, "__notes__", []), note]


def renamed(e: Exception, message: str) -> Exception:
    """An error of `e`'s class with `message`, keeping `e`'s notes (e.g. a child process's traceback)."""
    err = type(e)(message)
    for note in getattr(e, "__notes__", []):
        add_note(err, note)
    return err


def actor_input_error(e: BaseException) -> str | None:
    """The message of bad input (InputError / ConfigError) raised in an actor's `__init__`, else None. Ray reports
    such a death as ActorDiedError carrying only the text of the creation task's traceback, whose last line is
    `<module>.<Class>: <message>`: the class is looked up and checked, so only our bad-input errors match."""
    import importlib
    import re

    from actors.ray_actors import actor_death
    from envs.base import InputError
    from services.config import ConfigError

    death = actor_death(e)
    if death is None or not getattr(death, "actor_init_failed", False):
        return None
    lines = [x.strip() for x in re.sub(r"\x1b\[[0-9;]*m", "", str(death)).splitlines() if x.strip()]
    m = re.match(r"^([\w.]+)\.(\w+): (.+)$", lines[-1]) if lines else None
    if m is None:
        return None
    try:
        cls = getattr(importlib.import_module(m.group(1)), m.group(2))
    except (ImportError, AttributeError):
        return None
    return m.group(3) if isinstance(cls, type) and issubclass(cls, InputError | ConfigError) else None
