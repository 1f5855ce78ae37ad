import pytest

from lstm_engine import bench

SIZES = [64, 256, 1024]


@pytest.fixture(scope="module", params=SIZES, ids=lambda h: f"H={h}")
def systems(request):
    """The engine and onnxruntime on the default model of one size, warmed up."""
    model = bench.default_model(request.param)
    return {s.name: s for s in bench.systems(model, against=("ort",))}, model
