from __future__ import annotations

import subprocess
import sys

import pytest

from unclip import __version__
from unclip.cli import main


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "selfcheck" in out and "data" in out


def test_bad_argument_exit_2_one_line():
    proc = subprocess.run(
        [sys.executable, "-m", "unclip", "--no-such-flag"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "Traceback" not in proc.stderr


def test_python_m_version():
    proc = subprocess.run([sys.executable, "-m", "unclip", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and __version__ in proc.stdout
