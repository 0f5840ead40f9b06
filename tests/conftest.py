"""Test set-up: 8 simulated CPU devices (set before jax is imported) and shared fixtures."""

import os
import warnings

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax
import pytest

# A renamed flax/jax API should fail loudly, not warn.
warnings.filterwarnings("error", category=DeprecationWarning, module="flax")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than ~10 s")
    config.addinivalue_line("markers", "torch: needs PyTorch + transformers (parity tests)")


@pytest.fixture
def highest_precision():
    with jax.default_matmul_precision("highest"):
        yield
