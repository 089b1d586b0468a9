"""Triton's `reshape` in config.pbtxt: clients use the config's dims, the model gets its own shape, and
outputs come back in the config's dims. Checked with tritonclient over HTTP and gRPC, against numpy."""
import os
import shutil
import tempfile
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from fixtures import mlp_numpy
from server import REPOSITORY, Server

CONFIGS = {
    # The usual Triton form for a model whose input is only the batch dim.
    "strings": (
        "strings",
        'max_batch_size: 32\n'
        'input [ { name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] reshape: { shape: [ ] } } ]\n'
        'output [ { name: "UPPER" data_type: TYPE_STRING dims: [ 1 ] reshape: { shape: [ ] } } ]\n'
        'dynamic_batching { }\n',
    ),
    # The MLP's 16 inputs as a 4x4 grid and its 4 outputs as 2x2.
    "mlp_grid": (
        "mlp",
        'max_batch_size: 8\n'
        'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4, 4 ] reshape: { shape: [ 16 ] } } ]\n'
        'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 2, 2 ] reshape: { shape: [ 4 ] } } ]\n',
    ),
    # A variable dim on the client side, resolved from the element count.
    "mlp_rows": (
        "mlp",
        'max_batch_size: 8\n'
        'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1, 4 ] reshape: { shape: [ 16 ] } } ]\n',
    ),
    # Element counts that cannot match: the model must fail to load, alone.
    "bad_count": (
        "mlp",
        'max_batch_size: 8\n'
        'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 5 ] reshape: { shape: [ 16 ] } } ]\n',
    ),
}


@pytest.fixture(scope="module")
def reshape_server():
    root = tempfile.mkdtemp()
    for name, (source, config) in CONFIGS.items():
        os.makedirs(os.path.join(root, name, "1"))
        shutil.copy(os.path.join(REPOSITORY, source, "1", "model.onnx"), os.path.join(root, name, "1", "model.onnx"))
        with open(os.path.join(root, name, "config.pbtxt"), "w") as f:
            f.write(config)
    s = Server(repository=root, wait_ready=False)
    yield s
    assert s.stop() == 0
    shutil.rmtree(root)


def wait_for(client, model):
    for _ in range(200):
        if client.is_model_ready(model):
            return
        time.sleep(0.05)
    raise AssertionError(f"{model} never became ready")


def test_metadata_and_config_show_the_client_dims(reshape_server):
    client = httpclient.InferenceServerClient(reshape_server.http_addr)
    wait_for(client, "mlp_grid")
    meta = client.get_model_metadata("mlp_grid")
    assert meta["inputs"][0]["shape"] == [-1, 4, 4]
    assert meta["outputs"][0]["shape"] == [-1, 2, 2]
    config = client.get_model_config("mlp_grid")
    assert config["input"][0]["reshape"] == {"shape": [16]}
    assert config["output"][0]["dims"] == [2, 2]
    g = grpcclient.InferenceServerClient(reshape_server.grpc_addr)
    gconfig = g.get_model_config("strings").config
    assert list(gconfig.input[0].dims) == [1] and list(gconfig.input[0].reshape.shape) == []
    assert gconfig.input[0].HasField("reshape")


def test_strings_with_a_batch_only_input(reshape_server):
    client = httpclient.InferenceServerClient(reshape_server.http_addr)
    wait_for(client, "strings")
    text = np.array([[b"ab"], [b"Cd"], [b""]], dtype=np.object_)
    i = httpclient.InferInput("TEXT", [3, 1], "BYTES")
    i.set_data_from_numpy(text)
    out = client.infer("strings", [i]).as_numpy("UPPER")
    assert out.shape == (3, 1)
    assert out.ravel().tolist() == [b"AB", b"CD", b""]
    # The model's own shape is accepted too, and answered in the model's shapes.
    flat = httpclient.InferInput("TEXT", [3], "BYTES")
    flat.set_data_from_numpy(text.ravel())
    out = client.infer("strings", [flat]).as_numpy("UPPER")
    assert out.shape == (3,) and out.tolist() == [b"AB", b"CD", b""]
    # Any other shape is refused with the client dims in the message.
    wrong = httpclient.InferInput("TEXT", [3, 2], "BYTES")
    wrong.set_data_from_numpy(np.array([[b"a", b"b"]] * 3, dtype=np.object_))
    with pytest.raises(InferenceServerException) as err:
        client.infer("strings", [wrong])
    assert err.value.status() == "400" and "[-1, 1]" in err.value.message()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_mlp_reshaped_matches_numpy(reshape_server, reference, protocol):
    lib = httpclient if protocol == "http" else grpcclient
    addr = reshape_server.http_addr if protocol == "http" else reshape_server.grpc_addr
    client = lib.InferenceServerClient(addr)
    wait_for(client, "mlp_grid")
    x = np.random.default_rng(7).standard_normal((3, 16)).astype(np.float32)
    want = mlp_numpy(reference["mlp"], x)
    i = lib.InferInput("INPUT0", [3, 4, 4], "FP32")
    i.set_data_from_numpy(x.reshape(3, 4, 4))
    got = client.infer("mlp_grid", [i]).as_numpy("OUTPUT0")
    assert got.shape == (3, 2, 2)
    np.testing.assert_allclose(got.reshape(3, 4), want, rtol=1e-5, atol=1e-5)
    rows = lib.InferInput("INPUT0", [3, 4, 4], "FP32")
    rows.set_data_from_numpy(x.reshape(3, 4, 4))
    got = client.infer("mlp_rows", [rows]).as_numpy("OUTPUT0")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_reshape_that_cannot_fit_fails_that_model_only(reshape_server):
    client = httpclient.InferenceServerClient(reshape_server.http_addr)
    wait_for(client, "mlp_grid")
    assert not client.is_model_ready("bad_count")
    index = {m["name"]: m for m in client.get_model_repository_index()}
    assert index["bad_count"]["state"] == "UNAVAILABLE"
    assert "elements" in index["bad_count"]["reason"]
