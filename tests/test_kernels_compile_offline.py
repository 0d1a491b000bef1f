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

import json
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


# The device image's Triton (NOTES_triton.md run 13: Triton 3.6 laid the backward scan's state axis across lanes,
# which this repository's Triton did not, so offline counts made with it missed 24 shared-memory conversions and
# twice the shuffles that the H100 ran). .ci/run installs that version here, outside the environment.
DEVICE_TRITON = Path(os.environ.get("VIMAMBA_DEVICE_TRITON", ROOT / ".ci" / "triton-device"))


# (kind, options of scan_sass.py, most instructions in the step loop: the forward's, or the backward's phase B): the
# shipped kernels (the forward as for 1,024 steps or more: prefetches of u/delta/z and of B/C, no touch), the
# forward with fp32 B and C (as the model gives them there), as for shorter sequences (no prefetch, B/C touch),
# the backward with its L1 prefetch of B and C, and the forward at two steps a chunk with one lane a channel (Triton
# 3.6 once spread its step axis over two lanes there, every state computed twice: 519 instructions for two steps,
# 343 with the lanes declared contiguous)
@pytest.mark.parametrize("kind,options,max_step", [
    ("bwd", [], 470), ("fwd", [], 220), ("fwd", ["--bc-dtype", "fp32"], 180),
    ("fwd", ["--set", "PREFETCH=0", "BC_PREFETCH=0", "TOUCH=True"], 205), ("bwd", ["--set", "BC_PREFETCH=True"], 470),
    ("fwd", ["--tile", "2,16,1,1,1,32", "--bc-dtype", "fp32"], 360),
], ids=["bwd", "fwd", "fwd-fp32-states", "fwd-short", "bwd-bc-prefetch", "fwd-two-steps"])
def test_scan_compiles_without_layout_conversions_under_the_device_triton(kind, options, max_step, tmp_path):
    if not (DEVICE_TRITON / "triton").is_dir():
        pytest.skip(f"no Triton of the device image at {DEVICE_TRITON} (.ci/run installs it; or set "
                    "VIMAMBA_DEVICE_TRITON)")
    env = dict(os.environ, TRITON_INTERPRET="0")
    env["PYTHONPATH"] = os.pathsep.join([str(DEVICE_TRITON), str(ROOT / "src")])
    out = tmp_path / "sass.json"
    sass = tmp_path / "scan.sass"
    done = subprocess.run([sys.executable, "benchmarks/scan_sass.py", kind, *options, "--out", str(out),
                           "--sass", str(sass)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["triton"].startswith("3.6"), report["triton"]
    assert report["stack"] == 0, "spills"
    text = sass.read_text()
    # shared memory and barriers only appear for layout conversions: the kernels keep one layout throughout
    for op in ("STS", "LDS", "BAR.SYNC", "STL", "LDL"):
        assert f" {op}" not in text, f"{op} in the {kind} kernel's SASS"
    step = report["loops"][0 if kind == "fwd" else 1]["instructions"]
    assert step <= max_step, step
