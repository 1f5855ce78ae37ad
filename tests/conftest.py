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


@pytest.fixture(scope="module")
def worker_model(tmp_path_factory):
    """A small model's file, for worker processes (examples/ws_service.py --model)."""
    from helpers import make_model
    from workers import WORKER_INPUTS

    path = tmp_path_factory.mktemp("workers") / "net.lstm"
    make_model(np.random.default_rng(15), WORKER_INPUTS, (24,), head=4).save(path)
    return path


@pytest.fixture(scope="module")
def worker_engine(worker_model):
    """worker_model's Engine here: the outputs the workers must give. Building it
    compiles the kernels into the cache the workers load."""
    import lstm_engine as le
    from workers import WORKER_INPUTS

    engine = le.Engine(le.load(worker_model))
    engine.step_many([engine.open_stream()], np.zeros((1, WORKER_INPUTS), np.float32))
    return engine
