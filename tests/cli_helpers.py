"""Running the `vimamba` command (in-process, or under torchrun) and checking its one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from vimamba.cli.main import main


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, command: str, *fragments: str) -> str:
    """Exit status 2 and a single `vimamba <command>: error: ...` line (besides warnings) with every fragment."""
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if not line.startswith("warning:")]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"vimamba {command}: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def run_torchrun(*argv, processes: int = 2, timeout: int = 300) -> str:
    """`torchrun --nproc_per_node=N -m vimamba ...` on the CPU (gloo); fails the test with the output on error,
    else returns the launcher's stdout."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", "-m",
         "vimamba", *[str(a) for a in argv]], capture_output=True, text=True, timeout=timeout, env=env, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout
