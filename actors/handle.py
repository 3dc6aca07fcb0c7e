"""One handle over a worker, whether it is a local object or a Ray actor: `h.score(batch, lam, alpha)`.

In-process a call runs at once and returns its value; on a Ray actor it returns an ObjectRef, or one ref
per value for methods marked `@returns(n)` (so a caller can pass the batch on by ref and fetch only the
small stats). `h.get(x)` resolves either form, `gather` resolves a list. The driver and the sharded env pool
both talk to workers through it, so the same pipeline code runs in-process and on a cluster.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

W = TypeVar("W")
F = TypeVar("F", bound=Callable[..., Any])


def returns(n: int) -> Callable[[F], F]:
    """Mark a worker method as returning a tuple of `n` values; on Ray each value becomes its own ref."""

    def mark(fn: F) -> F:
        fn.__num_returns__ = n  # type: ignore[attr-defined]
        return fn

    return mark


class Handle(Generic[W]):
    """`target` is an instance of `cls` (local) or a Ray actor handle of it (`remote=True`)."""

    def __init__(self, target: Any, cls: type[W], remote: bool = False) -> None:
        self.target, self.cls, self.remote = target, cls, remote

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)
        fn = getattr(self.cls, name, None)
        if not callable(fn):
            raise AttributeError(f"{self.cls.__name__} has no method {name!r}")
        if not self.remote:
            return getattr(self.target, name)
        method = getattr(self.target, name)
        n = getattr(fn, "__num_returns__", 1)
        if n > 1:
            method = method.options(num_returns=n)
        return method.remote

    def get(self, x: Any) -> Any:
        """A call's value: ray.get for refs (or lists of refs), identity in-process."""
        if self.remote:
            import ray

            return ray.get(x)
        return x

    def __repr__(self) -> str:
        return f"Handle({self.cls.__name__}, {'ray' if self.remote else 'local'})"


def gather(handles: list[Handle[Any]], results: list[Any]) -> list[Any]:
    """Resolve one call result per handle (issued before any is awaited, so Ray actors run in parallel)."""
    if any(h.remote for h in handles):
        import ray

        return list(ray.get(results))
    return results
