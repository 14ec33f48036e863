"""The package installs the twistd plugin: `twistd relay` is listed and its help runs."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_twistd_lists_the_relay_plugin(tmp_path):
    # From a directory that is not the project: the installed package must provide it.
    result = subprocess.run([sys.executable, "-m", "twisted", "--help"], capture_output=True,
                            text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0
    assert "relay" in result.stdout.split("Commands:")[-1]


def test_twistd_relay_help_runs(tmp_path):
    result = subprocess.run([sys.executable, "-m", "twisted", "relay", "--help"],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0
    assert "--store" in result.stdout and "--config" in result.stdout


def test_wheel_carries_the_plugin_and_no_cache(tmp_path):
    # Build from a copy: setuptools leaves build/ and *.egg-info beside the sources.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "node_modules", "build", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(source)], check=True, timeout=300,
                   capture_output=True)
    (wheel,) = tmp_path.glob("relay-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "twisted/plugins/relay_plugin.py" in names
    assert "relay/tap.py" in names and "relay/store/memory/mailbox.py" in names
    assert not any(n.endswith("dropin.cache") or n.startswith("tests/") for n in names)
    assert "twisted/__init__.py" not in names and "twisted/plugins/__init__.py" not in names
