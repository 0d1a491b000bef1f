#!/bin/bash
# One call on a lent GPU that checks and times what the kernels' notes ask for, in order of priority, each step
# under its own time limit so that a slow or failing step leaves the rest (every result is written as it comes):
#
#     bash benchmarks/device_session.sh OUTDIR TAG [PARTS]   # e.g. bash benchmarks/device_session.sh "$OUT" h200
#
# PARTS: any of tests, sweep, bench, profile, comma-separated (default: all). All four took ~11 minutes on an
# H200 before the v7 sweep (up to 2 more), more than one 10-minute device call: e.g. "tests,sweep" in one call
# and "bench,profile" in the next.
#
# 1. GPU correctness: full-size scans (both directions, every gradient; the backward's sm_90 registers), the conv
#    (SLIDE tiles included), the whole-model fast-vs-reference comparison;   2. the v7 (two-direction backward)
#    and v6b scan sweeps;   3. `vimamba bench` at the target sizes, and at 224 with CUDA graphs;   4. the per-kernel profile, printing which
#    conv tile the autotuner took;   5. the training step's host time (host_overhead.py --train);   6. the first
#    call's compile/autotune seconds (first_call.py);   7. Nsight Compute's stall reasons for the 1248 pair.
# Needs the project on PYTHONPATH (set here) and nothing installed.
set -u
out=${1:?usage: device_session.sh OUTDIR TAG}
tag=${2:?usage: device_session.sh OUTDIR TAG}
parts=",${3:-tests,sweep,bench,profile},"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
step() {  # step SECONDS LOGNAME COMMAND...: run with a time limit, log to OUTDIR, say how it ended
    local limit=$1 log=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" > "$out/$log" 2>&1
    echo "$log: exit $? after $((SECONDS - start)) s"
}
want() { [[ $parts == *",$1,"* ]]; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,driver_version --format=csv > "$out/gpu-$tag.txt" 2>&1
if want tests; then
    step 260 "gpu_scan_tests-$tag.log" python -m pytest -q -p no:cacheprovider -m gpu \
        tests/test_ops_selective_scan_triton.py -k "bidir or full_size_gpu or compiles"
    step 120 "gpu_conv_tests-$tag.log" python -m pytest -q -p no:cacheprovider tests/test_ops_causal_conv1d_triton.py \
        -k "slide or pair or autotuned or model_case"
    step 150 "gpu_tests-$tag.log" python -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py
fi
if want sweep; then
    step 120 "scan_sweep_v7-$tag.log" python benchmarks/scan_sweep.py --grid v7 --out "$out/scan_sweep_v7-$tag.json"
    step 150 "scan_sweep_v6b-$tag.log" python benchmarks/scan_sweep.py --grid v6b --out "$out/scan_sweep_v6b-$tag.json"
fi
if want bench; then
    step 240 "bench-$tag-targets.log" python -m vimamba bench --models vim_tiny deit_tiny_sdpa vim_small deit_small_sdpa \
        --img-size 224 1248 --output "$out" --tag "$tag-targets"
    # the 224 rows again with both models replayed from CUDA graphs, the training step included
    step 150 "bench-$tag-graphs224.log" python -m vimamba bench --models vim_tiny deit_tiny_sdpa --img-size 224 \
        --cuda-graph --output "$out" --tag "$tag-graphs224"
fi
if want profile; then
    step 120 "profile-$tag.log" env TRITON_PRINT_AUTOTUNING=1 python benchmarks/scan_sweep.py --no-sweep --profile \
        --out "$out/profile-$tag.json"
    step 90 "host_overhead_train-$tag.log" python benchmarks/host_overhead.py --train \
        --out "$out/host_overhead_train-$tag.json"
    step 90 "first_call-$tag.log" python benchmarks/first_call.py --out "$out/first_call-$tag.json"
    if command -v ncu > /dev/null; then
        step 100 "ncu_pair_stalls-$tag.txt" ncu --clock-control none -k regex:_scan_fwd_kernel --launch-skip 1 \
            --launch-count 1 --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio" \
            python benchmarks/scan_sweep.py --one-bidir 64x6085
    fi
fi
grep -h "passed\|failed\|error" "$out"/gpu_*tests-"$tag".log 2>/dev/null | tail -n 6
grep -h "^|" "$out/scan_sweep_v7-$tag.log" "$out/scan_sweep_v6b-$tag.log" 2>/dev/null
tail -n 22 "$out/bench-$tag-targets.log" "$out/bench-$tag-graphs224.log" 2>/dev/null
head -n 8 "$out/host_overhead_train-$tag.log" 2>/dev/null
