"""The installed package serves what the checkout serves: every GraphiQL and dashboard asset is
in the wheel (a Docker image or `pip install orggraph` has no checkout to fall back on)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSET_DIRS = ("gateway/static", "gateway/dashboard")


def _source_tree(into: Path) -> Path:
    """What the Dockerfile copies, without build leftovers: an ``*.egg-info`` left by an
    editable install lists files that the package data would otherwise leave out."""
    leftovers = shutil.ignore_patterns("*.egg-info", "build", "__pycache__")
    into.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, into / name)
    for folder in ("gateway", "providers"):
        shutil.copytree(ROOT / folder, into / folder, ignore=leftovers)
    return into


def test_the_wheel_carries_every_asset_the_app_serves(tmp_path: Path) -> None:
    source = _source_tree(tmp_path / "src")
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(source),
        ],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = tmp_path.glob("orggraph-*.whl")
    packaged = set(zipfile.ZipFile(wheel).namelist())
    assets = sorted(
        str(path.relative_to(ROOT))
        for folder in ASSET_DIRS
        for path in (ROOT / folder).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    )
    assert len(assets) > 10
    missing = [asset for asset in assets if asset not in packaged]
    assert missing == []
