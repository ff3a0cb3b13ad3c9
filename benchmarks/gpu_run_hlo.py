"""Times the XLA programs `benchmarks/gpu_export_hlo.py` wrote, on a machine with JAX (no
TensorFlow needed): each HLO converted to StableHLO and compiled for the GPU by JAX's XLA
(`../shared/tools/gpu_via_jax/`), fed random parameters of the recorded shapes, timed.

    python benchmarks/gpu_run_hlo.py HLO_DIR OUT.json [--runs 20]

Per program: the compile time, then the median, minimum and maximum of `--runs` calls after
3 warm-up calls (each call's outputs waited for). Prints one line per program and writes the
figures with the GPU's name as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path

import jax
import numpy as np
from jax._src import xla_bridge
from jax._src.lib import xla_client

jax.config.update("jax_enable_x64", True)  # int64 parameters (the optimizer step) stay int64


def random_arguments(parameters: list[dict], seed: int = 0) -> list:
    """Host arrays of the parameters' shapes and dtypes (put on the device before each call:
    a training step donates its variables' buffers)."""
    rng = np.random.default_rng(seed)
    arrays = []
    for parameter in parameters:
        shape, dtype = parameter["shape"], parameter["dtype"]
        if dtype in ("float32", "float16", "bfloat16"):
            numpy_dtype = jax.numpy.dtype(dtype)  # bfloat16: ml_dtypes' numpy type
            value = (rng.standard_normal(shape) * 0.05).astype(numpy_dtype)
        elif dtype == "bool":
            value = np.zeros(shape, bool)
        else:  # integers: small non-negative values (steps, classes, indices)
            value = rng.integers(0, 2, shape).astype(dtype)
        arrays.append(value)
    return arrays


def gpu_name() -> str:
    try:
        return subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return str(jax.devices()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("hlo_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--backend", default="cuda", help="cuda, or cpu for a check here")
    args = parser.parse_args()
    backend = xla_bridge.get_backend(args.backend)
    device = backend.devices()[:1]
    results = {"gpu": gpu_name(), "jax": jax.__version__, "programs": {}}
    for spec_path in sorted(args.hlo_dir.glob("*.json")):
        spec = json.loads(spec_path.read_text())
        name = spec.get("name") if isinstance(spec, dict) else None
        if name is None or "parameters" not in spec:
            continue  # not a program's description (e.g. an earlier results file)
        if args.only and name not in args.only:
            continue
        hlo = (args.hlo_dir / f"{name}.hlo.pb").read_bytes()
        start = time.perf_counter()
        stablehlo = xla_client._xla.mlir.hlo_to_stablehlo(hlo)
        executable = backend.compile_and_load(stablehlo, device, xla_client.CompileOptions())
        compile_s = time.perf_counter() - start
        arguments = random_arguments(spec["parameters"])

        def call(executable=executable, arguments=arguments) -> float:
            on_device = [jax.device_put(value) for value in arguments]
            for value in on_device:
                value.block_until_ready()
            start = time.perf_counter()
            outputs = executable.execute(on_device)
            for output in outputs:
                output.block_until_ready()
            return time.perf_counter() - start

        for _ in range(3):
            call()
        seconds = [call() for _ in range(args.runs)]
        figures = {
            "compile_s": compile_s,
            "median_s": statistics.median(seconds),
            "min_s": min(seconds),
            "max_s": max(seconds),
            "runs": args.runs,
        }
        results["programs"][name] = figures
        print(
            f"{name}: compile {compile_s:.1f} s, median {1e3 * figures['median_s']:.1f} ms "
            f"(min {1e3 * figures['min_s']:.1f}, max {1e3 * figures['max_s']:.1f})",
            flush=True,
        )
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
