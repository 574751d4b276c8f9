"""Every test's time limit: 600 s through pytest-timeout (the [test] extra) where it is
installed. Set here, not as the `timeout` ini option, so a plain install without that plugin
gets no "Unknown config option" warning; $PYTEST_TIMEOUT or --timeout still win."""

import os

os.environ.setdefault("PYTEST_TIMEOUT", "600")
