import zlib

import numpy as np
import pytest


@pytest.fixture
def rng(request):
    # one seed per test id: reproducible, yet different across parametrisations
    seed = zlib.crc32(request.node.nodeid.encode())
    return np.random.default_rng(seed)


@pytest.fixture(scope="session")
def redis_url():
    """redis:// URL of a real redis-server started for this test session (redis_server.py)."""
    from redis_server import redis_server

    with redis_server() as url:
        yield url
