"""services/child.run_in_child: exit codes pass through, and the child dies when its parent is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from services.child import run_in_child

ROOT = Path(__file__).resolve().parents[2]


def _fail(code: int) -> None:
    raise SystemExit(code)


def test_exit_codes_pass_through() -> None:
    assert run_in_child(_fail, (0,), "ok") == 0
    assert run_in_child(_fail, (3,), "fails") == 3


def _bad_input(msg: str) -> None:
    from envs.base import InputError

    raise InputError(msg)


def _bad_config(msg: str) -> None:
    from services.config import ConfigError

    raise ConfigError(msg)


def _bug() -> None:
    {}["missing"]  # noqa: B018 -- a KeyError, as a bug would raise


def test_bad_input_in_the_child_is_raised_here_as_itself(capfd) -> None:
    from envs.base import InputError
    from services.config import ConfigError

    with pytest.raises(InputError) as ei:
        run_in_child(_bad_input, ("env.alfworld.games_dir = /nope: no such directory",), "stepopsd-sft")
    assert str(ei.value) == "env.alfworld.games_dir = /nope: no such directory"  # its message, as raised
    assert "in the child process stepopsd-sft" in ei.value.__notes__[0] and "_bad_input" in ei.value.__notes__[0]
    with pytest.raises(ConfigError, match="sft.lr"):
        run_in_child(_bad_config, ("sft.lr = -1: must be > 0",), "stepopsd-sft")
    err = capfd.readouterr().err
    assert "Traceback" not in err, err  # the child printed nothing of it: the parent decides what to show


def test_a_bug_in_the_child_names_the_child_and_the_error() -> None:
    from services.child import ChildFailed

    with pytest.raises(ChildFailed) as ei:
        run_in_child(_bug, (), "stepopsd-eval")
    assert str(ei.value) == "stepopsd-eval: KeyError: 'missing'"
    assert "KeyError" in ei.value.__notes__[0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_child_dies_with_its_parent(tmp_path: Path) -> None:
    script = ("import time\nfrom services.child import run_in_child\n"
              "if __name__ == '__main__':\n    run_in_child(time.sleep, (120,), 'sleeper')\n")
    (tmp_path / "parent.py").write_text(script)
    parent = subprocess.Popen([sys.executable, str(tmp_path / "parent.py")], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.time() + 60
        kids: list[psutil.Process] = []
        while time.time() < deadline and not kids:
            kids = [k for k in psutil.Process(parent.pid).children() if "resource_tracker" not in " ".join(k.cmdline())]
            time.sleep(0.2)
        assert kids, "the child never started"
        time.sleep(1.0)  # let the child reach prctl
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        gone, alive = psutil.wait_procs(kids, timeout=15)
        assert not alive, f"orphaned children still running: {[k.pid for k in alive]}"
    finally:
        if parent.poll() is None:
            parent.kill()
