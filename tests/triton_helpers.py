"""Compiling a kernel for Hopper without a GPU, for the kernel test files (registers, spills, vector widths)."""

import pytest


def compile_for_sm90(fn, types, constexprs, aligned, num_warps=4):
    """PTX of ``fn`` for sm_90 with the given argument types (default i32), constexprs, and the arguments
    the launcher would mark 16-divisible (aligned pointers, strides and sizes that are multiples of 16)."""
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
    return triton.compile(source, target=target, options={"num_warps": num_warps}).asm["ptx"]
