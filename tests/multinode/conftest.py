"""Fixtures for the two-host tests: a pair of network-namespace hosts, skipped where impossible."""
from __future__ import annotations

import pytest

from tests.multinode.harness import HarnessUnavailable, TwoHosts, unavailable_reason


def start_two_hosts(workdir, **kwargs) -> TwoHosts:
    """Start the harness, or skip the test with the reason it cannot run here."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    hosts = TwoHosts(workdir, **kwargs)
    try:
        hosts.start()
    except HarnessUnavailable as err:
        pytest.skip(str(err))
    return hosts


@pytest.fixture(scope="module")
def two_hosts(tmp_path_factory):
    """Two hosts (10.77.0.1, 10.77.0.2) with sshd, a hostfile and launcher env; torn down after the module."""
    hosts = start_two_hosts(tmp_path_factory.mktemp("two_hosts"))
    try:
        yield hosts
    finally:
        hosts.stop()
