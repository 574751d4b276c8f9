"""Every test's time limit: 600 s through pytest-timeout (the [test] extra) where it is
installed. Set here, not as the `timeout` ini option, so a plain install without that plugin
gets no "Unknown config option" warning; $PYTEST_TIMEOUT or --timeout still win."""

import os

import pytest

os.environ.setdefault("PYTEST_TIMEOUT", "600")


@pytest.fixture
def keep_threads():
    """torch's thread count as it was before the test (commands and timings pin it in this
    process); modules whose tests pin it use it for every test (`pytestmark`)."""
    import torch  # here, not at the top: moeperf may be imported before torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)
