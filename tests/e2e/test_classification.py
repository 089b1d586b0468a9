"""Triton's classification extension: an output requested with `classification: N` (HTTP) or `class_count`
(tritonclient gRPC) answers the top N classes of each batch item as BYTES "VALUE:INDEX[:LABEL]", labels from the
output's `label_filename`. Checked with tritonclient over HTTP (JSON and binary) and gRPC against the top N that
numpy computes from the unclassified output."""
import json
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from server import REPOSITORY, Server

LABELS = ["tabby cat", "dog", "bird", "fish"]
MLP_INPUT = 'input [ { name: "INPUT0", data_type: TYPE_FP32, dims: [ 16 ] } ]\n'
MODELS = {
    "classifier": 'max_batch_size: 64\n' + MLP_INPUT
    + 'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] label_filename: "labels.txt" } ]\n'
    'dynamic_batching { max_queue_delay_microseconds: 0 }\n',
    "plain": 'max_batch_size: 64\n' + MLP_INPUT
    + 'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]\n',
    # Not batching: the whole output [1, 4] is one item, answered as [N].
    "unbatched": 'max_batch_size: 0\n'
    'input [ { name: "INPUT0", data_type: TYPE_FP32, dims: [ 1, 16 ] } ]\n'
    'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 1, 4 ] label_filename: "labels.txt" } ]\n',
    # Names a label file that is not there: the load fails with the reason.
    "unlabelled": 'max_batch_size: 64\n' + MLP_INPUT
    + 'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] label_filename: "absent.txt" } ]\n',
}
BATCH = np.random.default_rng(20).standard_normal((3, 16)).astype(np.float32)


@pytest.fixture(scope="module")
def srv():
    root = tempfile.mkdtemp()
    for name, config in MODELS.items():
        os.makedirs(os.path.join(root, name, "1"))
        shutil.copy(os.path.join(REPOSITORY, "mlp", "1", "model.onnx"), os.path.join(root, name, "1", "model.onnx"))
        with open(os.path.join(root, name, "config.pbtxt"), "w") as f:
            f.write(config)
        if name != "unlabelled":
            with open(os.path.join(root, name, "labels.txt"), "w") as f:
                f.write("\n".join(LABELS) + "\n")
    shutil.copytree(os.path.join(REPOSITORY, "strings"), os.path.join(root, "strings"))
    s = Server(repository=root, wait_ready=False)
    client = httpclient.InferenceServerClient(s.http_addr)
    deadline = time.time() + 60
    while not all(client.is_model_ready(m) for m in ("classifier", "plain", "unbatched", "strings")):
        assert time.time() < deadline, s.logs()
        time.sleep(0.05)
    yield s
    assert s.stop() == 0
    shutil.rmtree(root)


def expected(scores, count, labels):
    """Per item: the top `count` (clamped) by value, highest first, ties in index order, as C++ writes them."""
    rows = []
    for row in np.asarray(scores, dtype=np.float32).reshape(-1, scores.shape[-1]):
        order = np.argsort(-row, kind="stable")[:count]
        rows.append([f"{'%f' % float(row[i])}:{i}" + (f":{labels[i]}" if labels else "") for i in order])
    return rows


def unclassified(srv, model, x):
    client = httpclient.InferenceServerClient(srv.http_addr)
    inp = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp], outputs=[httpclient.InferRequestedOutput("OUTPUT0")]).as_numpy("OUTPUT0")


def classified(srv, protocol, model, x, count):
    if protocol == "grpc":
        client, mod = grpcclient.InferenceServerClient(srv.grpc_addr), grpcclient
        out = grpcclient.InferRequestedOutput("OUTPUT0", class_count=count)
    else:
        client, mod = httpclient.InferenceServerClient(srv.http_addr), httpclient
        out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=protocol == "http-binary", class_count=count)
    inp = mod.InferInput("INPUT0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer(model, [inp], outputs=[out])
    answer = result.as_numpy("OUTPUT0")
    output = result.get_output("OUTPUT0")
    assert (output.datatype if protocol == "grpc" else output["datatype"]) == "BYTES"
    return np.vectorize(lambda v: v.decode() if isinstance(v, bytes) else str(v), otypes=[object])(answer)


@pytest.mark.parametrize("protocol", ["http-json", "http-binary", "grpc"])
@pytest.mark.parametrize("model,labels", [("classifier", LABELS), ("plain", None)])
@pytest.mark.parametrize("count", [1, 3, 10])
def test_top_n_matches_numpy(srv, protocol, model, labels, count):
    scores = unclassified(srv, model, BATCH)
    assert scores.shape == (3, 4)
    answer = classified(srv, protocol, model, BATCH, count)
    assert answer.shape == (3, min(count, 4))  # N past the class count is clamped to it
    assert answer.tolist() == expected(scores, count, labels)


@pytest.mark.parametrize("protocol", ["http-json", "http-binary", "grpc"])
def test_a_model_without_batching_answers_n(srv, protocol):
    x = BATCH[:1]
    scores = unclassified(srv, "unbatched", x)
    answer = classified(srv, protocol, "unbatched", x, 2)
    assert answer.shape == (2,)
    assert answer.tolist() == expected(scores, 2, LABELS)[0]


def test_the_output_is_bytes_and_other_outputs_are_untouched(srv):
    client = httpclient.InferenceServerClient(srv.http_addr)
    inp = httpclient.InferInput("INPUT0", [3, 16], "FP32")
    inp.set_data_from_numpy(BATCH, binary_data=False)
    out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=False, class_count=2)
    result = client.infer("classifier", [inp], outputs=[out])
    output = result.get_output("OUTPUT0")
    assert output["datatype"] == "BYTES" and output["shape"] == [3, 2]
    assert all(isinstance(v, str) and v.count(":") == 2 for v in output["data"])
    # The same request without the parameter still gets the scores.
    plain = client.infer("classifier", [inp], outputs=[httpclient.InferRequestedOutput("OUTPUT0")])
    assert plain.as_numpy("OUTPUT0").dtype == np.float32


def post_infer(srv, model, body):
    req = urllib.request.Request(f"{srv.http_url}/v2/models/{model}/infer", data=json.dumps(body).encode(),
                                 method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.parametrize("count", [0, -1, 2.5, "3", True])
def test_a_count_that_is_not_a_positive_integer_is_400(srv, count):
    body = {
        "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": BATCH[0].tolist()}],
        "outputs": [{"name": "OUTPUT0", "parameters": {"classification": count}}],
    }
    status, answer = post_infer(srv, "classifier", body)
    assert status == 400, answer
    assert "positive integer" in answer["error"]


def test_a_negative_class_count_over_grpc_is_invalid_argument(srv):
    client = grpcclient.InferenceServerClient(srv.grpc_addr)
    inp = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
    inp.set_data_from_numpy(BATCH[:1])
    with pytest.raises(InferenceServerException) as err:
        client.infer("classifier", [inp], outputs=[grpcclient.InferRequestedOutput("OUTPUT0", class_count=-1)])
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "positive integer" in err.value.message()


def test_a_bytes_output_cannot_be_classified(srv):
    text = np.array([[b"hello"]], dtype=np.object_)
    http = httpclient.InferenceServerClient(srv.http_addr)
    inp = httpclient.InferInput("TEXT", [1, 1], "BYTES")
    inp.set_data_from_numpy(text)
    with pytest.raises(InferenceServerException) as err:
        http.infer("strings", [inp], outputs=[httpclient.InferRequestedOutput("UPPER", class_count=1)])
    assert err.value.status() == "400"
    assert "only numeric outputs can be classified" in err.value.message()
    grpc = grpcclient.InferenceServerClient(srv.grpc_addr)
    inp = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
    inp.set_data_from_numpy(text)
    with pytest.raises(InferenceServerException) as err:
        grpc.infer("strings", [inp], outputs=[grpcclient.InferRequestedOutput("UPPER", class_count=1)])
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "only numeric outputs can be classified" in err.value.message()


def test_label_filename_is_reported_and_a_missing_file_fails_the_load(srv):
    http = httpclient.InferenceServerClient(srv.http_addr)
    assert http.get_model_config("classifier")["output"][0]["label_filename"] == "labels.txt"
    assert http.get_model_config("plain")["output"][0]["label_filename"] == ""
    grpc = grpcclient.InferenceServerClient(srv.grpc_addr)
    config = grpc.get_model_config("classifier", as_json=True)["config"]
    assert config["output"][0]["label_filename"] == "labels.txt"
    assert "classification" in http.get_server_metadata()["extensions"]
    assert "classification" in grpc.get_server_metadata().extensions
    index = {m["name"]: m for m in http.get_model_repository_index()}
    assert index["unlabelled"]["state"] == "UNAVAILABLE"
    assert "absent.txt" in index["unlabelled"]["reason"] and "does not exist" in index["unlabelled"]["reason"]
