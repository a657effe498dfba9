"""specee's kernels against ggml's dot products, per weight type and column count.

Builds bench/kernels/kernel_bench.cpp (CMake, -DSPECEE_BUILD_BENCH=ON, into
build-bench/ unless --exe names a built one), then, for each weight type and
thread count: the read bandwidth of a plain AVX2 loop over 1 GiB, and the
weights' GB/s and time per pass for 1, 2, 4, 8 columns, ggml and specee in
the same process. The shapes are the shipped models': Qwen2.5-Coder-1.5B's
Q6_K output matrix (151936 x 1536, 191 MB) and a Q4_K matrix of 226 MB;
Qwen2.5-Coder-0.5B's Q8_0 output matrix (151936 x 896, 145 MB) and a Q5_0
matrix of its layers' size (267 MB); and SmolLM2-135M's Q4_1 layers as one
matrix (184320 x 576, 66 MB, which a large L3 may partly hold, as it holds
the model's).

    python bench/kernels.py --threads 1 2 --json bench/results/kernels/xeon.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from machine import cpu_model

ROOT = Path(__file__).resolve().parent.parent
SHAPES = {"q6_k": (151936, 1536), "q4_k": (262144, 1536), "q8_0": (151936, 896), "q5_0": (387072, 896),
          "q4_1": (184320, 576)}


def build(build_dir: Path) -> Path:
    if not (build_dir / "CMakeCache.txt").exists():
        subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build_dir), "-DSPECEE_BUILD_BENCH=ON",
                        "-DCMAKE_BUILD_TYPE=Release"], check=True)
    subprocess.run(["cmake", "--build", str(build_dir), "--target", "specee-kernel-bench", "-j2"], check=True)
    return build_dir / "specee-kernel-bench"


def run(exe: Path, *args, isa: str | None = None) -> list[dict]:
    env = {**os.environ, "SPECEE_KERNELS_ISA": isa} if isa else None
    out = subprocess.run([str(exe), *map(str, args)], check=True, capture_output=True, text=True, env=env).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--types", nargs="+", default=sorted(SHAPES), choices=sorted(SHAPES))
    ap.add_argument("--max-columns", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=2.0, help="time per measurement (best run counts)")
    ap.add_argument("--exe", type=Path, help="a built specee-kernel-bench")
    ap.add_argument("--isa", choices=["avx2", "avx512_vnni"], help="cap specee's kernel set (default: the CPU's best)")
    ap.add_argument("--build-dir", type=Path, default=ROOT / "build-bench")
    ap.add_argument("--json", type=Path, help="write every record here")
    args = ap.parse_args(argv)

    exe = args.exe or build(args.build_dir)
    records: list[dict] = []
    for t in args.threads:
        records += run(exe, "bandwidth", 1024, 0, t, 0, args.seconds)
        for kind in args.types:
            rows, cols = SHAPES[kind]
            records += run(exe, kind, rows, cols, t, args.max_columns, args.seconds, isa=args.isa)
    cpu = cpu_model()
    print(f"CPU: {cpu}")
    bw = {r["threads"]: r["gb_s"] for r in records if r["kind"] == "bandwidth"}
    for r in records:
        if r["kind"] == "check":
            print(f"check {r['type']}: isa {r['isa']}, fast == reference {r['fast_equals_reference']}, "
                  f"batched == one column {r['batched_equals_one_column']}, "
                  f"max relative difference vs ggml {r['max_rel_diff_vs_ggml']:.2g}, repack {r['repack_s']:.2f} s")
    print(f"{'type':5} {'thr':>3} {'cols':>4} {'ggml GB/s':>9} {'specee GB/s':>11} {'x ggml':>7} "
          f"{'% of read bw':>12} {'pass / 1 col':>12}")
    one = {}
    for r in records:
        if r["kind"] != "mul_mat":
            continue
        key = (r["type"], r["threads"])
        one.setdefault(key, r["specee_ms"])
        print(f"{r['type']:5} {r['threads']:>3} {r['columns']:>4} {r['ggml_gb_s']:>9.2f} {r['specee_gb_s']:>11.2f} "
              f"{r['speedup']:>7.2f} {100 * r['specee_gb_s'] / bw[r['threads']]:>11.0f}% "
              f"{r['specee_ms'] / one[key]:>12.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"cpu": cpu, "records": records}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
