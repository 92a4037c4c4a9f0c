"""Test configuration: 8 fake CPU devices so sharding code runs, deterministic CPU math.

XLA reads ``XLA_FLAGS`` once, when JAX initialises its backend, so the flag is set here before
anything imports jax.
"""

import os

_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def devices():
    devs = jax.devices()
    assert len(devs) == 8, f"expected 8 fake CPU devices, got {len(devs)}; XLA_FLAGS set too late?"
    return devs
