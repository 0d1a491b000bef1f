"""The kernels' offline sm_90 compile checks, run in CI too.

Those checks (registers and spills, vector widths, what the SLIDE conv window's and the split scan's loops
carry; ``-k "compiles or loop_carried"`` in the four kernel test files) need triton imported for compilation,
and on a machine without a GPU this suite imports it for the interpreter (conftest.py), so in this process they
skip. Here they run in a fresh process with ``TRITON_INTERPRET=0``: Triton's front end, its GPU passes and ptxas
need no GPU. The compiled-only bugs of sessions 6-7 (SLIDE tiles right in the interpreter and wrong on the GPU;
a split-scan loop that the interpreter ran and the compiler refused) are what such checks catch before a device
call does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parent.parent
FILES = ["tests/test_ops_selective_scan_triton.py", "tests/test_ops_rms_norm_triton.py",
         "tests/test_ops_causal_conv1d_triton.py", "tests/test_ops_ssm_proj_triton.py"]


def test_compile_checks_pass_in_a_compiling_process():
    import triton.language as tl
    from triton.runtime.jit import JITFunction

    if isinstance(tl.standard._sum_combine, JITFunction):
        pytest.skip("triton compiles in this process: the compile checks run here directly")
    env = dict(os.environ, TRITON_INTERPRET="0")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", *FILES,
                           "-k", "compiles or loop_carried"], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=1200)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "passed" in summary and "skipped" not in summary, done.stdout[-4000:]
