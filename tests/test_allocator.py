"""Processes that run XLA programs run under tcmalloc when the machine has it
(sgv_jax/allocator.py); .ci/run installs it (Debian's libtcmalloc-minimal4)."""

import os
import subprocess
import sys
import textwrap

import pytest

from sgv_jax import allocator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

needs_tcmalloc = pytest.mark.skipif(allocator.tcmalloc_library() is None,
                                    reason="no tcmalloc here (apt install libtcmalloc-minimal4)")


def run_python(code: str, *args: str, env: dict | None = None, argv: tuple = ()) -> str:
    environ = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", allocator.SETTING)}
    out = subprocess.run([sys.executable, *args, "-c", textwrap.dedent(code), *argv], cwd=REPO,
                         env={**environ, **(env or {})}, capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


REEXEC = """
    import os, sys
    from sgv_jax import allocator
    print("start", os.getpid(), flush=True)  # printed again by the re-executed process
    allocator.reexec_under_tcmalloc()
    print("libtcmalloc" in open("/proc/self/maps").read(), sys.argv[1:])
"""


@needs_tcmalloc
def test_a_launch_script_replaces_itself_with_the_same_command_under_tcmalloc():
    *starts, last = run_python(REEXEC, argv=("--flag", "x y")).splitlines()
    # Replaced once, by the same pid (its parent's signals and wait still reach it), with the
    # command as it was typed.
    assert len(starts) == 2 and starts[0] == starts[1] == f"start {starts[0].split()[1]}"
    assert last == "True ['--flag', 'x y']"


def test_system_malloc_when_asked_or_when_another_allocator_is_preloaded():
    assert run_python(REEXEC, env={allocator.SETTING: "system"}).splitlines()[1:] == ["False []"]
    assert allocator.tcmalloc_environment({"LD_PRELOAD": "/x/libjemalloc.so.2"}) is None
    assert allocator.in_use() in ("glibc malloc", f"{os.environ.get('LD_PRELOAD')} (LD_PRELOAD)")


FAULTS = """
    import resource
    import jax, jax.numpy as jnp
    @jax.jit
    def f(x):  # a ~200 MB temporary per run
        y = jnp.concatenate([x @ x, x * 2, x + 1], axis=0)
        return (y @ x).sum()
    x = jnp.ones((2048, 2048), jnp.float32)
    for _ in range(2):
        f(x).block_until_ready()
    faults = []
    for _ in range(3):  # the fewest of three runs: one run may coincide with other work
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        f(x).block_until_ready()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(min(faults))
"""


@needs_tcmalloc
def test_under_tcmalloc_an_xla_run_does_not_fault_its_temporaries_in_again():
    """glibc maps each run's temporaries afresh from XLA's worker threads (every page faults
    again); tcmalloc reuses the freed ones."""
    pages = 3 * 2048 * 2048 * 4 // 4096
    glibc = int(run_python(FAULTS, env={allocator.SETTING: "system"}))
    tcmalloc = int(run_python(FAULTS, "-m", "sgv_jax.allocator"))
    print(f"minor faults of one run: glibc {glibc}, tcmalloc {tcmalloc} ({pages} pages)")
    assert glibc > pages // 2, glibc
    assert tcmalloc < pages // 20, tcmalloc
