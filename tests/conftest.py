"""Test set-up: 8 simulated CPU devices (set before jax is imported) and shared fixtures."""

import os
import shutil
import tempfile
import warnings

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One XLA compilation cache for the whole run, subprocesses (launch/*.py) included: most tests
# compile the demo model's programs, which an earlier test compiled already, and compiling is
# most of the suite's time on 2 cores. A cached program is the same executable, so bitwise
# comparisons between runs hold. Set JAX_COMPILATION_CACHE_DIR to keep one across runs.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="sgv_jax_test_xla_cache_")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import jax
import pytest

# A renamed flax/jax API should fail loudly, not warn.
warnings.filterwarnings("error", category=DeprecationWarning, module="flax")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than ~10 s")
    config.addinivalue_line("markers", "torch: needs PyTorch + transformers (parity tests)")


def pytest_sessionfinish(session, exitstatus):
    if _OWN_CACHE:
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


@pytest.fixture
def highest_precision():
    with jax.default_matmul_precision("highest"):
        yield
