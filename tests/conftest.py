"""Test configuration: the MNIST directory and a fixture that loads it once."""

import os
from pathlib import Path

import pytest

# Tests and CI read the four MNIST files from the shared data directory beside the checkout,
# unless CROSSBAR_EMU_DATA already names one.
REPOSITORY = Path(__file__).resolve().parents[1]
os.environ.setdefault("CROSSBAR_EMU_DATA", str(REPOSITORY.parent / "shared" / "data" / "mnist"))


@pytest.fixture(scope="session")
def mnist():
    """The MNIST arrays, loaded and verified once per session."""
    from crossbar_emu.mnist import DataError, load_mnist

    try:
        return load_mnist(os.environ["CROSSBAR_EMU_DATA"])
    except DataError as error:
        pytest.skip(f"MNIST files not available: {error}")
