"""Run the process under tcmalloc when the machine has it (Debian: libtcmalloc-minimal4).

XLA:CPU allocates each execution's temporaries as one buffer, with posix_memalign from a worker
thread (1.37 GB for benchmarks/bench_train.py's step). glibc serves a request that large from
a thread's arena with a fresh mmap and unmaps it when it is freed, so every step faults every
page in again: 351k minor faults and 0.85 s of system time per 4.3 s step on 2 Zen 3 cores
(glibc's tunables cannot keep it: threads' arenas mmap past `mmap_max`, and one arena for all
threads contends). tcmalloc keeps freed spans for the next request: ~300 faults a step, and the
step 4.33 / 4.29 -> 3.77 / 3.93 s. jemalloc purges them back (more faults than glibc).

The allocator is fixed when a process starts (LD_PRELOAD), so the launch scripts call
`reexec_under_tcmalloc()` first, which replaces the process with itself under tcmalloc, and
`python -m sgv_jax.allocator ARGS...` runs `python ARGS...` under it (the test suite).
SGV_ALLOCATOR=system keeps glibc's malloc; an LD_PRELOAD that already names an allocator is
left alone. This module imports nothing heavy: it runs before JAX is loaded.
"""

from __future__ import annotations

import ctypes.util
import os
import sys

LIBRARIES = ("tcmalloc_minimal", "tcmalloc")  # gperftools' sonames, the minimal one first
SETTING = "SGV_ALLOCATOR"  # "tcmalloc" (default: when found) or "system"
PRELOADED = ("tcmalloc", "jemalloc", "mimalloc")  # an LD_PRELOAD naming one is the user's choice


def tcmalloc_library() -> str | None:
    """The tcmalloc shared library the dynamic loader finds, or None."""
    for name in LIBRARIES:
        found = ctypes.util.find_library(name)
        if found:
            return found
    return None


def tcmalloc_environment(environ: dict | None = None) -> dict | None:
    """`environ` with tcmalloc preloaded, or None when it should not or cannot be."""
    environ = dict(os.environ if environ is None else environ)
    preload = environ.get("LD_PRELOAD", "")
    if environ.get(SETTING, "tcmalloc") == "system" or any(n in preload for n in PRELOADED):
        return None
    if not sys.platform.startswith("linux"):  # LD_PRELOAD is the Linux loader's
        return None
    library = tcmalloc_library()
    if library is None:
        return None
    # By default tcmalloc hands freed pages back to the OS little by little, and the next run
    # faults them in again (17k of a 12k-page temporary's faults, once in three suite runs).
    return {"TCMALLOC_RELEASE_RATE": "0", **environ,
            "LD_PRELOAD": f"{library} {preload}".strip()}


def in_use() -> str:
    """The allocator this process runs with, for benchmarks' headers."""
    preloaded = [p for p in os.environ.get("LD_PRELOAD", "").split() if
                 any(n in p for n in PRELOADED)]
    return f"{preloaded[0]} (LD_PRELOAD)" if preloaded else "glibc malloc"


def reexec_under_tcmalloc() -> None:
    """Replace this process with the same command under tcmalloc (same pid, so signals and
    exit statuses are unchanged); returns when it is already under one or has none."""
    environ = tcmalloc_environment()
    if environ is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environ)


def main() -> None:
    """`python -m sgv_jax.allocator ARGS...`: `python ARGS...` under tcmalloc when found."""
    command = [sys.executable, *sys.argv[1:]]
    os.execve(sys.executable, command, tcmalloc_environment() or dict(os.environ))


if __name__ == "__main__":
    main()
