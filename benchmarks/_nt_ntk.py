"""neural-tangents' empirical NTK of a ``32 → width → width → 1`` ReLU MLP on ``n`` inputs, every
implementation, as a worker for ``bench_ntk.py`` (run with the Python of an environment that has ``jax`` and
``neural-tangents``; the benchmark's own environment need not).

Protocol: ``python _nt_ntk.py N WIDTH``; the worker compiles each implementation (``jax.jit``, one-threaded
XLA on the CPU), prints one JSON line ``{"labels": [...], "jax": ..., "neural_tangents": ...}``, then answers
each input line ``"<index> <calls>"`` with a JSON list of the wall times (seconds) of that many calls of
implementation ``index``, until ``quit`` or end of input.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import contextlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402

# neural-tangents imports its TensorFlow front end (TensorFlow, jax2tf) on import; it is not used here
sys.modules.setdefault("neural_tangents.experimental", types.ModuleType("neural_tangents.experimental"))

import jax  # noqa: E402
import neural_tangents as nt  # noqa: E402
from neural_tangents import stax  # noqa: E402


def build(n: int, width: int) -> list[tuple[str, object]]:
    """``[(label, call)]``: a compiled kernel function per implementation and ``vmap_axes``."""
    init_fn, apply_fn, _ = stax.serial(
        stax.Dense(width, parameterization="standard"),
        stax.Relu(),
        stax.Dense(width, parameterization="standard"),
        stax.Relu(),
        stax.Dense(1, parameterization="standard"),
    )
    key = jax.random.PRNGKey(0)
    _, params = init_fn(key, (-1, 32))
    x = jax.random.normal(key, (n, 32))
    out = []
    for impl in nt.NtkImplementation:
        if impl.name == "AUTO":
            continue
        for vmap_axes in (None, 0):
            kernel = jax.jit(
                nt.empirical_ntk_fn(apply_fn, trace_axes=(-1,), vmap_axes=vmap_axes, implementation=impl)
            )

            def call(kernel=kernel) -> None:
                kernel(x, None, params).block_until_ready()

            with contextlib.redirect_stdout(io.StringIO()):  # neural-tangents prints FLOP estimates
                call()
            out.append((f"{impl.name.lower()}, vmap_axes={vmap_axes}", call))
    return out


def main() -> None:
    n, width = int(sys.argv[1]), int(sys.argv[2])
    fns = build(n, width)
    print(
        json.dumps(
            {"labels": [lab for lab, _ in fns], "jax": jax.__version__, "neural_tangents": nt.__version__}
        ),
        flush=True,
    )
    for line in sys.stdin:
        if line.strip() == "quit":
            break
        index, calls = (int(v) for v in line.split())
        call = fns[index][1]
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
        print(json.dumps(times), flush=True)


if __name__ == "__main__":
    main()
