"""Run the vimamba CLI, or a script, with entries of the selective scan's _CONFIG_OVERRIDE set first: a device
session times a kernel option this way before it becomes the default.

    python benchmarks/_override_run.py '{"touch": false}' bench --models vim_tiny ...
    python benchmarks/_override_run.py '{"touch": false}' benchmarks/scan_sweep.py --no-sweep --profile ...
"""

import json
import runpy
import sys

import vimamba.ops.selective_scan.triton_scan as triton_scan

if __name__ == "__main__":
    triton_scan._CONFIG_OVERRIDE = json.loads(sys.argv[1]) or None
    print(f"selective scan override: {triton_scan._CONFIG_OVERRIDE}", flush=True)
    if len(sys.argv) > 2 and sys.argv[2].endswith(".py"):
        sys.argv = sys.argv[2:]
        runpy.run_path(sys.argv[0], run_name="__main__")
    else:
        sys.argv = ["vimamba"] + sys.argv[2:]
        runpy.run_module("vimamba", run_name="__main__", alter_sys=True)
