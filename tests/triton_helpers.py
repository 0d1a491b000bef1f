"""What the conv and norm kernel test files share: device, per-dtype tolerances, the error measure, the
heuristic-config fixture, and compiling a kernel for Hopper without a GPU (registers, spills, vector widths).

conftest.py switches Triton's interpreter on before anything imports triton when there is no GPU.
"""

import os

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
INTERPRETED = DEVICE == "cpu" or os.environ.get("TRITON_INTERPRET") == "1"
# The interpreter truncates fp32 -> bf16 where the GPU rounds to nearest, hence the wider bf16 bound there.
TOL = {
    torch.float32: 1e-5,
    torch.float16: 1e-2,
    torch.bfloat16: 2e-2 if INTERPRETED else 1e-2,
}
LENGTHS = [1, 2, 7, 197, 730]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True)
def heuristic_configs(request, monkeypatch):
    """On a GPU, tests use each kernel's heuristic config (autotuning their many variants would take minutes);
    test_autotuned runs the autotuner. No effect in the interpreter, which never autotunes."""
    if not request.node.name.startswith("test_autotuned"):
        monkeypatch.setenv("VIMAMBA_TRITON_AUTOTUNE", "0")


def rel_err(got: torch.Tensor, expected: torch.Tensor) -> float:
    got, expected = got.detach().cpu().double(), expected.detach().cpu().double()
    assert got.shape == expected.shape
    return ((got - expected).abs().max() / expected.abs().max().clamp_min(1e-12)).item()


def compile_for_sm90(fn, types, constexprs, aligned, num_warps=4, options=None, asm="ptx"):
    """PTX (or, ``asm="cubin"``, the binary) of ``fn`` for sm_90 with the given argument types (default i32),
    constexprs, the arguments the launcher would mark 16-divisible (aligned pointers, strides and sizes that
    are multiples of 16), and further compile ``options`` (e.g. maxnreg)."""
    try:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        from triton.runtime.jit import JITFunction
    except ImportError as exc:  # pragma: no cover
        pytest.skip(f"Triton's compiler entry points moved: {exc}")
    import triton.language as tl

    if not isinstance(tl.standard._sum_combine, JITFunction):
        pytest.skip("triton was imported with TRITON_INTERPRET=1: its own @jit helpers are interpreter-only "
                    "in this process (run this test where triton is imported first, or on a GPU machine)")
    jf = JITFunction(fn)
    signature = {n: "constexpr" if n in constexprs else types.get(n, "i32") for n in jf.arg_names}
    attrs = {(jf.arg_names.index(n),): [["tt.divisibility", 16]] for n in aligned}
    try:
        source = ASTSource(jf, signature, constexprs, attrs)
        target = GPUTarget("cuda", 90, 32)
    except TypeError as exc:  # pragma: no cover
        pytest.skip(f"Triton's compiler entry points changed: {exc}")
    return triton.compile(source, target=target, options={"num_warps": num_warps, **(options or {})}).asm[asm]


def pointer_types(fn, fp32_prefixes) -> dict:
    """Triton types of a kernel's pointer arguments for compile_for_sm90: fp32 for the names starting with one
    of ``fp32_prefixes``, bf16 for the rest."""
    code = fn.__code__
    ptrs = [n for n in code.co_varnames[:code.co_argcount] if n.endswith("_ptr")]
    return {n: "*fp32" if n.startswith(tuple(fp32_prefixes)) else "*bf16" for n in ptrs}


def loop_iter_args(ttir: str) -> list:
    """The ``iter_args(...)`` list of each ``scf.for`` in Triton IR, in program order: what each loop carries
    (``%name = %start`` per carried value)."""
    import re

    return re.findall(r"scf\.for .*iter_args\((.*?)\) ->", ttir)


def sass_resources(cubin: bytes) -> dict:
    """Registers and stack bytes per thread of a compiled kernel, read by the cuobjdump that Triton ships."""
    import re
    import subprocess
    import tempfile

    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        pytest.skip(f"no cuobjdump beside Triton ({tool})")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    return {k: int(re.search(rf"{k}:(\d+)", out).group(1)) for k in ("REG", "STACK")}
