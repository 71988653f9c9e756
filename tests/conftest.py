import warnings

import pytest

warnings.filterwarnings("ignore", message="no QP solver found")

FMNIST_ROOT = "/usr/share/datasets/fashion-mnist"


@pytest.fixture(scope="session")
def fmnist_root():
    from pathlib import Path

    if not (Path(FMNIST_ROOT) / "train-images-idx3-ubyte.gz").exists():
        pytest.fail("Fashion-MNIST is missing: apt-get install dataset-fashion-mnist (the install script does it)")
    return FMNIST_ROOT
