#!/bin/bash
# One call on a lent GPU that checks and times what the kernels' notes ask for, in order of priority, each step
# under its own time limit so that a slow or failing step leaves the rest (every result is written as it comes):
#
#     bash benchmarks/device_session.sh OUTDIR TAG [PARTS]   # e.g. bash benchmarks/device_session.sh "$OUT" h200
#
# PARTS: comma-separated groups or single steps (default: all four groups; more than one 10-minute device call
# holds, so name steps). The device tool brings back at most 8 files: end a call by packing $OUT into one archive
# (session 8 lost its profile and ncu files to that limit).
#   tests:   scan_tests, split_tests, conv_tests, proj_tests, model_tests
#   sweep:   sweep_proj, conv_sweep, sweep_v13, sweep_v12c, sweep_v12b, sweep_v12, sweep_v11, sweep_v10, sweep_v8, sweep_split, sweep_v7, sweep_v6b
#   bench:   bench_targets, bench_fused, bench_prefetch (after sweep_v11), bench_graphs
#   profile: kernel_profile, model_variants, host, first_call, ncu_model, ncu_fwd, ncu_bwd, ncu_src
# The next call (session 12 timed its options inside the model with model_variants, the targets, the 224 graph
# rows and ncu of the model's own launch; nothing is waiting to be timed): after a kernel change,
#   for p in model_variants kernel_profile ncu_model bench_targets; do ...; done
#
# 1. GPU correctness: full-size scans (both directions, every gradient; the backward's sm_90 registers), the
#    forward split in time, the conv (SLIDE tiles included), the fused projections, the whole-model
#    fast-vs-reference comparison (with and without the fused projections);   2. sweeps: the fused projections
#    against cuBLAS, v8 (two channels per thread in the backward), the forward split in time at small batches,
#    v7 (two-direction backward), v6b;   3. `vimamba bench` at the target sizes (as shipped, and with the fused
#    projections on), and at 224 with CUDA graphs;   4. the per-kernel profile, printing which conv tile the
#    autotuner took;   5. the training step's host time (host_overhead.py --train);   6. the first call's
#    compile/autotune seconds (first_call.py);   7. Nsight Compute's stall reasons for the 1248 pair's forward
#    and for the two-direction backward at the training size (Vim-Ti 224, batch 128).
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
want() {  # want STEP GROUP: the step was asked for by name or through its group
    [[ $parts == *",$1,"* || $parts == *",$2,"* ]]
}
# SCAN_OVERRIDE (JSON, optional): selective-scan options that are not the default yet (entries of triton_scan's
# _CONFIG_OVERRIDE, e.g. '{"touch": false}'), set for the benches and the profile
if [[ -n ${SCAN_OVERRIDE:-} ]]; then
    run=(python benchmarks/_override_run.py "$SCAN_OVERRIDE")
    cli=("${run[@]}")
else
    run=(python)
    cli=(python -m vimamba)
fi
# the rows of the issue's targets, for every bench step that times them
targets=(--models vim_tiny deit_tiny_sdpa vim_small deit_small_sdpa --img-size 224 1248)
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,driver_version --format=csv > "$out/gpu-$tag.txt" 2>&1
if want scan_tests tests; then
    step 260 "gpu_scan_tests-$tag.log" python -m pytest -q -p no:cacheprovider -m gpu \
        tests/test_ops_selective_scan_triton.py -k "bidir or full_size_gpu or compiles"
fi
if want split_tests tests; then
    step 120 "gpu_split_tests-$tag.log" python -m pytest -q -p no:cacheprovider -m gpu \
        tests/test_ops_selective_scan_triton.py -k "split"
fi
if want conv_tests tests; then
    # (a fresh machine compiles every tile the tests pin: 134 tests took 121 s on the H200 in session 7)
    step 300 "gpu_conv_tests-$tag.log" python -m pytest -q -p no:cacheprovider tests/test_ops_causal_conv1d_triton.py \
        -k "slide or pair or autotuned or model_case"
fi
if want proj_tests tests; then
    step 120 "gpu_proj_tests-$tag.log" python -m pytest -q -p no:cacheprovider tests/test_ops_ssm_proj_triton.py
fi
if want model_tests tests; then
    step 240 "gpu_tests-$tag.log" python -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py
fi
if want sweep_proj sweep; then
    step 120 "proj_sweep-$tag.log" python benchmarks/proj_sweep.py --out "$out/proj_sweep-$tag.json"
fi
if want conv_sweep sweep; then
    step 150 "conv_sweep-$tag.log" python benchmarks/conv_sweep.py --out "$out/conv_sweep-$tag.json"
fi
# the scan sweeps, newest grid first: GRID:SECONDS
for grid in v13:150 v12c:150 v12b:150 v12:200 v11:150 v10:150 v8:150 v7:120 v6b:150 split:150; do
    name=${grid%%:*}
    if want "sweep_$name" sweep; then
        step "${grid##*:}" "scan_sweep_$name-$tag.log" python benchmarks/scan_sweep.py --grid "$name" \
            --out "$out/scan_sweep_$name-$tag.json"
    fi
done
if want bench_targets bench; then
    step 300 "bench-$tag-targets.log" "${cli[@]}" bench "${targets[@]}" --output "$out" --tag "$tag-targets"
fi
if want bench_fused bench; then
    # the target rows with the fused x_proj/dt_proj kernel on (off by default until this has run)
    step 300 "bench-$tag-fused.log" env VIMAMBA_FUSED_PROJ=1 "${cli[@]}" bench "${targets[@]}" --output "$out" \
        --tag "$tag-fused"
fi
if want bench_prefetch bench && [[ -f $out/scan_sweep_v11-$tag.json ]]; then
    # the target rows with the forward's prefetch distance that the v11 sweep timed fastest for the 1248 pair
    pf=$(python - "$out/scan_sweep_v11-$tag.json" <<'PY'
import json, sys
rows = [r for r in json.load(open(sys.argv[1]))["sweep"] if r.get("pass_") == "bidir" and "ms" in r
        and r["batch"] == 64 and isinstance(r["tile"], dict)]
print(json.dumps({"prefetch": min(rows, key=lambda r: r["ms"])["tile"]["prefetch"]} if rows else {}))
PY
)
    step 300 "bench-$tag-prefetch.log" python benchmarks/_override_run.py "$pf" bench "${targets[@]}" \
        --output "$out" --tag "$tag-prefetch"
fi
if want bench_graphs bench; then
    # the 224 rows again with both models replayed from CUDA graphs, the training step included
    step 150 "bench-$tag-graphs224.log" "${cli[@]}" bench --models vim_tiny deit_tiny_sdpa --img-size 224 \
        --cuda-graph --output "$out" --tag "$tag-graphs224"
fi
if want kernel_profile profile; then
    step 120 "profile-$tag.log" env TRITON_PRINT_AUTOTUNING=1 "${run[@]}" benchmarks/scan_sweep.py --no-sweep --profile \
        --out "$out/profile-$tag.json"
fi
if want host profile; then
    step 90 "host_overhead_train-$tag.log" python benchmarks/host_overhead.py --train \
        --out "$out/host_overhead_train-$tag.json"
fi
if want model_variants profile; then
    # the model's forward under kernel options that sped the scan up alone but not (yet) inside the model
    step 150 "model_variants-$tag.log" python benchmarks/model_variants.py --out "$out/model_variants-$tag.json"
fi
if want first_call profile; then
    step 90 "first_call-$tag.log" python benchmarks/first_call.py --out "$out/first_call-$tag.json"
fi
stalls="regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio"
issue="smsp__issue_active.avg.per_cycle_active,sm__warps_active.avg.per_cycle_active,gpu__time_duration.sum"
if want ncu_fwd profile && command -v ncu > /dev/null; then
    step 100 "ncu_pair_stalls-$tag.txt" ncu --clock-control none -k regex:_scan_fwd_kernel --launch-skip 1 \
        --launch-count 1 --metrics "$stalls,$issue" python benchmarks/scan_sweep.py --one-bidir 64x6085
fi
if want ncu_bwd profile && command -v ncu > /dev/null; then
    step 100 "ncu_bwd_stalls-$tag.txt" ncu --clock-control none -k regex:_scan_bwd_kernel --launch-skip 1 \
        --launch-count 1 --metrics "$stalls,$issue" python benchmarks/scan_sweep.py --one-bidir-bwd 128x197
fi
src_report() {  # src_report NAME KERNEL SKIP ARGS...: full set of the launch after SKIP, then its source and details pages
    local name=$1 kernel=$2 skip=$3
    shift 3
    step 200 "ncu_src_$name-$tag.log" ncu --clock-control none --set full --import-source yes -f \
        -k "regex:$kernel" --launch-skip "$skip" --launch-count 1 -o "$out/ncu_src_$name-$tag" "$@"
    if [[ -f $out/ncu_src_$name-$tag.ncu-rep ]]; then
        step 60 "ncu_src_$name-$tag.csv" ncu --import "$out/ncu_src_$name-$tag.ncu-rep" --page source --csv \
            --print-source sass
        step 60 "ncu_details_$name-$tag.txt" ncu --import "$out/ncu_src_$name-$tag.ncu-rep" --page details
        # (warps of the launch and steps each walks, for the per-step instruction mix; the CSV is kept)
        case $name in
            pair_T* | model_pair) per_step=(--warps 1536 --steps 6085) ;;  # Vim-Ti 1248 b64 pair, one lane per channel
            bwd224) per_step=(--warps 6144 --steps 224) ;;    # 24 x 128 x 2 one-warp programs, 7 x 32 steps
            *) per_step=() ;;
        esac
        step 30 "ncu_digest_$name-$tag.txt" python benchmarks/ncu_digest.py "$out/ncu_src_$name-$tag.csv" \
            --top 40 "${per_step[@]}"
        rm -f "$out/ncu_src_$name-$tag.ncu-rep"
    fi
}
if want ncu_model profile && command -v ncu > /dev/null; then
    # the model's own forward scan launch as shipped (Vim-Ti 1248, batch 64, bf16 autocast: the sixth launch of
    # model_variants' warm-up of its defaults)
    src_report model_pair _scan_fwd_kernel 5 python benchmarks/model_variants.py --batch 64 --rounds 1 --iters 1 \
        --variants defaults --out "$out/ncu_model_variants-$tag.json"
fi
if want ncu_src profile && command -v ncu > /dev/null; then
    # source-level: per SASS instruction, the warp-state samples (why each instruction waited), for the 1248
    # pair at one and at two steps per chunk (T = 2 ran 36% slower, unexplained; NOTES_triton.md run 11) and for
    # the two-direction backward at the training size; the binary reports are dropped once printed as text
    src_report pair_T1 _scan_fwd_kernel 1 python benchmarks/scan_sweep.py --one-bidir 64x6085 --tile "[1,16,1,1,1,32,1]"
    src_report pair_T2 _scan_fwd_kernel 1 python benchmarks/scan_sweep.py --one-bidir 64x6085 --tile "[2,16,1,1,1,32,1]"
    src_report bwd224 _scan_bwd_kernel 1 python benchmarks/scan_sweep.py --one-bidir-bwd 128x197
fi
grep -h "passed\|failed\|error" "$out"/gpu_*tests-"$tag".log 2>/dev/null | tail -n 6
grep -h "^|" "$out"/scan_sweep_v*-"$tag".log 2>/dev/null
tail -n 22 "$out/bench-$tag-targets.log" "$out/bench-$tag-graphs224.log" 2>/dev/null
head -n 8 "$out/host_overhead_train-$tag.log" 2>/dev/null
