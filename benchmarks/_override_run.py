"""Run the vimamba CLI, or a script, with entries of the selective scan's _CONFIG_OVERRIDE set first: a device
session times a kernel option this way before it becomes the default, or times the previous default against a
new one in the same call.

    python benchmarks/_override_run.py '{"touch": false}' bench --models vim_tiny ...
    python benchmarks/_override_run.py '{"touch": false}' benchmarks/scan_sweep.py --no-sweep --profile ...
    python benchmarks/_override_run.py '{"prefetch": 0, "vimamba.ops:SCAN_STATES_FP32_MIN_LENGTH": null}' bench ...

A key of the form "module:ATTRIBUTE" sets that module attribute instead (a rule's constant). ``apply_settings``
does the same in a running process (benchmarks/model_variants.py).
"""

import importlib
import json
import runpy
import sys

import vimamba.ops.selective_scan.triton_scan as triton_scan


def apply_settings(settings: dict, announce: bool = False) -> None:
    """Sets the "module:ATTRIBUTE" keys of ``settings`` as module attributes (an attribute the module lacks is an
    error; a number takes the old value's type, so JSON's 1e9 stays an int) and the other keys as the scan's
    _CONFIG_OVERRIDE (None when there are none)."""
    scan = dict(settings)
    for key in [k for k in scan if ":" in k]:
        module, _, attribute = key.partition(":")
        target = importlib.import_module(module)
        if not hasattr(target, attribute):
            raise SystemExit(f"{module} has no attribute {attribute!r}")
        old = getattr(target, attribute)
        value = scan.pop(key)
        if value is not None and isinstance(old, (int, float, bool)):
            value = type(old)(value)
        setattr(target, attribute, value)
        if announce:
            print(f"{module}.{attribute} = {value!r} (was {old!r})", flush=True)
    triton_scan._CONFIG_OVERRIDE = scan or None


if __name__ == "__main__":
    apply_settings(json.loads(sys.argv[1]) or {}, announce=True)
    print(f"selective scan override: {triton_scan._CONFIG_OVERRIDE}", flush=True)
    if len(sys.argv) > 2 and sys.argv[2].endswith(".py"):
        sys.argv = sys.argv[2:]
        runpy.run_path(sys.argv[0], run_name="__main__")
    else:
        sys.argv = ["vimamba"] + sys.argv[2:]
        runpy.run_module("vimamba", run_name="__main__", alter_sys=True)
