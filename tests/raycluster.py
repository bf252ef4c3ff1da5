"""A real local Ray cluster for the tests: two "nodes" on this machine (``ray.cluster_utils.Cluster``),
bounded in CPUs and object-store memory so CI fits in 2 cores / 24 GB. Without Ray the fixtures skip,
saying so (scripts/setup.sh installs it).

``ray_cluster`` (session): the running cluster (``.address``), 2 nodes of 1 CPU each; stopped in a
``finally`` even when tests fail. ``ray_connected`` (per test): this process connected to it as a
driver (``ray.init(address=...)``), disconnected after; yields the address. Everything binds to
127.0.0.1 (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, ``node_ip_address``): nothing leaves loopback.

A test module takes the fixtures with ``pytest_plugins = ["raycluster"]`` (a plugin is registered once, so
the whole session shares one cluster; importing the fixtures into each module would start one per module).
"""

from __future__ import annotations

import os

import pytest

LOOPBACK = "127.0.0.1"
NODES = 2
CPUS_PER_NODE = 1
OBJECT_STORE_BYTES = 100 * 2**20     # per node; Ray's floor is 75 MiB


def _node_args(head: bool) -> dict:
    args = dict(num_cpus=CPUS_PER_NODE, object_store_memory=OBJECT_STORE_BYTES, node_ip_address=LOOPBACK)
    if head:
        args["include_dashboard"] = False
    return args


@pytest.fixture(scope="session")
def ray_cluster():
    """Two Ray nodes on loopback, 1 CPU each, for the whole session."""
    # Before ray's first import: it reads these then (set after, the driver never reaches the GCS).
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    pytest.importorskip("ray", reason="ray is not installed (scripts/setup.sh installs it): the Ray tests "
                        "need a local cluster")
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args=_node_args(head=True))
    try:
        for _ in range(NODES - 1):
            cluster.add_node(**_node_args(head=False))
        cluster.wait_for_nodes()
        yield cluster
    finally:
        cluster.shutdown()


@pytest.fixture
def ray_connected(ray_cluster):
    """This process as a driver of ``ray_cluster``; yields its address."""
    import ray

    ray.init(address=ray_cluster.address, _node_ip_address=LOOPBACK, log_to_driver=False)
    try:
        yield ray_cluster.address
    finally:
        ray.shutdown()
