"""The documentation site: every public object documented, every page reachable, a strict build."""

from __future__ import annotations

import importlib
import inspect
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["data", "models", "infer", "distributions", "metrics", "samplers", "training", "nn", "testing", "hub"]


def _undocumented(package: str) -> list[str]:
    """Public functions, classes and methods of ``pyromv.<package>.__all__`` without a docstring
    (a method may inherit its parent's)."""
    module = importlib.import_module(f"pyromv.{package}")
    missing = []
    for name in module.__all__:
        obj = getattr(module, name)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if not inspect.getdoc(obj):
            missing.append(name)
        if not inspect.isclass(obj):
            continue
        for attr, value in vars(obj).items():
            if attr.startswith("_"):
                continue
            func = value.fget if isinstance(value, property) else getattr(value, "__func__", value)
            if not inspect.isfunction(func) or not func.__module__.startswith("pyromv") or func.__doc__:
                continue
            inherited = any(getattr(getattr(base, attr, None), "__doc__", None) for base in obj.__mro__[1:])
            if not inherited:
                missing.append(f"{name}.{attr}")
    return missing


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_object_has_a_docstring(package):
    assert _undocumented(package) == [], f"pyromv.{package}: undocumented public objects"


def test_every_package_has_an_api_page():
    for package in PACKAGES:
        page = ROOT / "docs" / "api" / f"{package}.md"
        assert page.is_file(), f"no API page for pyromv.{package}"
        assert f"::: pyromv.{package}" in page.read_text()


def test_every_page_is_in_the_navigation():
    nav = ROOT.joinpath("mkdocs.yml").read_text()
    listed = set(re.findall(r":\s*(\S+\.(?:md|ipynb))\s*$", nav, flags=re.M))
    pages = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*")
             if p.suffix in (".md", ".ipynb") and ".ipynb_checkpoints" not in p.parts
             and p.parent.name != "results"}  # raw benchmark tables (mkdocs.yml: exclude_docs)
    assert pages - listed == set(), "pages missing from mkdocs.yml's nav"
    assert listed - pages == set(), "nav entries without a page"


def test_strict_site_build(tmp_path):
    """``mkdocs build --strict``: no broken link or anchor, no docstring griffe cannot parse."""
    pytest.importorskip("mkdocs", reason="the site needs the docs extra: pip install -e '.[docs]'")
    pytest.importorskip("mkdocstrings")
    mkdocs = shutil.which("mkdocs") or str(Path(sys.executable).with_name("mkdocs"))
    done = subprocess.run(
        [mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
        capture_output=True, text=True, env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"},
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (tmp_path / "site" / "api" / "models" / "index.html").is_file()
