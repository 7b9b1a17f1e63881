"""Fixtures of the hub tests: a real JupyterHub with two users' servers (hub_testing.py)."""

from hub_testing import (  # noqa: F401  (fixtures and the report hook, used by name)
    _print_logs_on_failure,
    hub,
    pytest_runtest_makereport,
    servers,
    upstream,
)
