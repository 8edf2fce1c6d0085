import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Tests never download data (they use data they make, data kerntk ships, or $KERNTK_DATA_DIR):
# a load nothing local can serve fails fast and the test skips, also in the example subprocesses.
os.environ.setdefault("KERNTK_NO_DOWNLOAD", "1")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


#: Seed every test starts from (Python ``random``, NumPy's global generator, TensorFlow and the
#: Keras initializers that get no explicit seed). ``KERNTK_TEST_SEED=N pytest`` reruns the suite
#: under another draw: a test that passes for one seed only is asserting noise.
TEST_SEED = int(os.environ.get("KERNTK_TEST_SEED", "0"))


@pytest.fixture(autouse=True)
def _reset_keras_state():
    """Each test starts from float32, a fresh Keras name scope and the same random seed, so any
    test reproduces on its own, in any order and in any subset of the suite."""
    keras.config.set_dtype_policy("float32")
    # Clears Keras' global seed state too: seed after it. Without its garbage collection
    # (free_memory=False): that cost 0.6 s per test late in the run (the heap grows), ~40 s
    # for the 75 harness tests alone; Python's own collector still runs.
    keras.utils.clear_session(free_memory=False)
    keras.utils.set_random_seed(TEST_SEED)
    yield
    keras.config.set_dtype_policy("float32")
    keras.config.set_floatx("float32")


@pytest.fixture
def rng():
    return np.random.default_rng(TEST_SEED)
