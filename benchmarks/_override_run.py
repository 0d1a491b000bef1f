"""Run the vimamba CLI, or a script, with entries of the selective scan's _CONFIG_OVERRIDE set first: a device
session times a kernel option this way before it becomes the default, or times the previous default against a
new one in the same call.

    python benchmarks/_override_run.py '{"touch": false}' bench --models vim_tiny ...
    python benchmarks/_override_run.py '{"touch": false}' benchmarks/scan_sweep.py --no-sweep --profile ...
    python benchmarks/_override_run.py '{"prefetch": 8, "vimamba.ops:PACK_STATES_MIN_LENGTH": 1024}' bench ...

A key of the form "module:ATTRIBUTE" sets that module attribute instead (a rule's constant).
"""

import importlib
import json
import runpy
import sys

import vimamba.ops.selective_scan.triton_scan as triton_scan

if __name__ == "__main__":
    settings = json.loads(sys.argv[1]) or {}
    for key in [k for k in settings if ":" in k]:
        module, _, attribute = key.partition(":")
        target = importlib.import_module(module)
        if not hasattr(target, attribute):
            raise SystemExit(f"{module} has no attribute {attribute!r}")
        old = getattr(target, attribute)
        value = settings.pop(key)
        setattr(target, attribute, type(old)(value) if isinstance(old, (int, float, bool)) else value)
        print(f"{module}.{attribute} = {getattr(target, attribute)!r} (was {old!r})", flush=True)
    triton_scan._CONFIG_OVERRIDE = settings or None
    print(f"selective scan override: {triton_scan._CONFIG_OVERRIDE}", flush=True)
    if len(sys.argv) > 2 and sys.argv[2].endswith(".py"):
        sys.argv = sys.argv[2:]
        runpy.run_path(sys.argv[0], run_name="__main__")
    else:
        sys.argv = ["vimamba"] + sys.argv[2:]
        runpy.run_module("vimamba", run_name="__main__", alter_sys=True)
