"""The scripts under benchmarks/ start and parse their arguments on this machine, so a device call is not spent
on an import or argument error; the CPU-only host profile runs in full and its launch counts are pinned."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py") if not p.name.startswith("_"))


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return env


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_parses_its_arguments(script):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--help"], capture_output=True,
                          text=True, env=_env(), cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage" in done.stdout.lower()


def test_device_session_script_is_valid_bash():
    done = subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "device_session.sh")], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr


def test_host_profile_counts_vims_launches(tmp_path):
    """Vim-Ti's eager inference forward launches three Triton kernels per block (add + RMSNorm, both convs in
    one pass, both scans in one launch) and the final norm; the training step the same each way (the backward
    of both convs and of both scans one launch each). A change that adds launches shows here."""
    out = tmp_path / "host_profile.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "host_profile_cpu.py"), "--out", str(out)],
                          capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    vim, deit = report["models"]["vim_tiny"], report["models"]["deit_tiny_sdpa"]
    assert vim["depth"] == 24 and deit["depth"] == 12
    assert vim["inference forward"]["triton_launches"] == 3 * 24 + 1
    assert deit["inference forward"]["triton_launches"] == 0
    # forward and backward: 25 norms, 24 conv pairs, 24 scan pairs each
    assert vim["training step"]["triton_launches"] == 2 * (25 + 24 + 24)
    for model in (vim, deit):
        for call in ("inference forward", "training step"):
            assert model[call]["ms"] > 0 and model[call]["aten_ops"] > 0
    assert "forward_list" in report["vim_train_profile"]
