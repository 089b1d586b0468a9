"""Triton compatibility of what clients match on, with tritonclient over HTTP and gRPC against the real binary
in explicit model control mode: Triton's wording for unknown models and versions, model control answers
(a load of a model outside the repository, an unloaded model in the index), and configs ferroserve cannot
honour (`sequence_batching`, `ensemble_scheduling`, a decoupled transaction policy) failing their load with
the reason, in the load error and in the repository index."""
import os
import shutil
import tempfile

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from server import REPOSITORY, Server

UNSUPPORTED = {
    "seq": ("sequence_batching { max_sequence_idle_microseconds: 5000000 }", "`sequence_batching`"),
    "ens": ("ensemble_scheduling { step [ { model_name: \"mlp\" model_version: -1 } ] }", "`ensemble_scheduling`"),
    "dec": ("model_transaction_policy { decoupled: true }", "`model_transaction_policy { decoupled: true }`"),
}


def mlp_copy(root, name, extra=""):
    """models/repository/mlp under another name, with `extra` appended to its config.pbtxt."""
    shutil.copytree(os.path.join(REPOSITORY, "mlp"), os.path.join(root, name))
    path = os.path.join(root, name, "config.pbtxt")
    with open(path) as f:
        text = f.read().replace('name: "mlp"', f'name: "{name}"')
    with open(path, "w") as f:
        f.write(text + "\n" + extra + "\n")


@pytest.fixture(scope="module")
def srv():
    root = tempfile.mkdtemp(prefix="ferroserve-triton-compat-")
    mlp_copy(root, "mlp")
    mlp_copy(root, "spare")
    mlp_copy(root, "nondec", "model_transaction_policy { decoupled: false }")
    for name, (extra, _) in UNSUPPORTED.items():
        mlp_copy(root, name, extra)
    s = Server("--model-control-mode", "explicit", "--load-model", "mlp", repository=root)
    try:
        yield s
    finally:
        assert s.stop() == 0
        shutil.rmtree(root)


def clients(s):
    return [("http", httpclient.InferenceServerClient(s.http_addr)),
            ("grpc", grpcclient.InferenceServerClient(s.grpc_addr))]


def mlp_input(kind):
    module = httpclient if kind == "http" else grpcclient
    inp = module.InferInput("INPUT0", [1, 16], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 16), dtype=np.float32))
    return inp


def raised(call):
    with pytest.raises(InferenceServerException) as err:
        call()
    return err.value.status(), err.value.message()


NOT_FOUND = {"http": "404", "grpc": "StatusCode.NOT_FOUND"}
INVALID = {"http": "400", "grpc": "StatusCode.INVALID_ARGUMENT"}
UNAVAILABLE = {"http": "503", "grpc": "StatusCode.UNAVAILABLE"}


def index_rows(kind, client):
    if kind == "http":
        return {m["name"]: m for m in client.get_model_repository_index()}
    return {m.name: {"name": m.name, "version": m.version, "state": m.state, "reason": m.reason}
            for m in client.get_model_repository_index().models}


def test_unknown_model_is_worded_as_triton_words_it(srv):
    expected = "Request for unknown model: 'nope' is not found"
    for kind, client in clients(srv):
        assert raised(lambda: client.infer("nope", [mlp_input(kind)])) == (NOT_FOUND[kind], expected), kind
        assert raised(lambda: client.get_model_metadata("nope")) == (NOT_FOUND[kind], expected), kind
        assert raised(lambda: client.get_model_config("nope")) == (NOT_FOUND[kind], expected), kind
        client.close()


def test_unknown_version_is_worded_as_triton_words_it(srv):
    expected = "Request for unknown model: 'mlp' version 99 is not found"
    for kind, client in clients(srv):
        assert raised(lambda: client.infer("mlp", [mlp_input(kind)], model_version="99")) == (NOT_FOUND[kind], expected)
        assert raised(lambda: client.get_model_metadata("mlp", model_version="99")) == (NOT_FOUND[kind], expected)
        client.close()


def test_a_version_that_is_not_a_number_is_worded_as_triton_words_it(srv):
    """grpc_explicit_int8_content_client.py matches this text for model_version="wrong_specification"."""
    expected = "failed to get model version from specified version string 'wrong_specification'"
    for kind, client in clients(srv):
        assert raised(lambda: client.infer("mlp", [mlp_input(kind)], model_version="wrong_specification")) == (
            INVALID[kind], expected)
        assert raised(lambda: client.get_model_metadata("mlp", model_version="wrong_specification")) == (
            INVALID[kind], expected)
        client.close()


def test_server_metadata_names_triton_as_its_client_programs_expect(srv):
    """simple_*_health_metadata.py fail unless the name is `triton`; the version is ferroserve's own."""
    http = httpclient.InferenceServerClient(srv.http_addr)
    assert http.get_server_metadata()["name"] == "triton"
    http.close()
    with grpcclient.InferenceServerClient(srv.grpc_addr) as client:
        assert client.get_server_metadata().name == "triton"


def mixed_request():
    request = service_pb2.ModelInferRequest(model_name="mlp")
    inp = request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 16])
    inp.contents.fp32_contents.extend([0.0] * 16)
    request.raw_input_contents.append(np.zeros(16, dtype=np.float32).tobytes())
    return request


def mixed_error(srv):
    channel = grpc.insecure_channel(srv.grpc_addr)
    try:
        with pytest.raises(grpc.RpcError) as err:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(mixed_request(), timeout=30)
        return err.value.code(), err.value.details()
    finally:
        channel.close()


def test_mixed_contents_and_raw_input_contents_are_refused(srv):
    code, message = mixed_error(srv)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "INPUT0" in message and "raw_input_contents" in message


def test_mixed_contents_are_worded_as_triton_words_it(srv):
    assert mixed_error(srv) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "contents field must not be specified when using raw_input_contents for 'INPUT0' for model 'mlp'",
    )


def test_loading_a_model_outside_the_repository(srv):
    for kind, client in clients(srv):
        status, message = raised(lambda: client.load_model("not_a_model"))
        assert status == NOT_FOUND[kind], (kind, status, message)
        assert message.startswith("failed to load 'not_a_model', failed to poll from model repository"), message
        assert "not_a_model" not in index_rows(kind, client), "a failed load of an unknown name leaves no row"
        client.close()


def test_a_malformed_config_override_fails_the_load_in_triton_words(srv):
    """simple_*_model_control.py load `simple` with a config that is not JSON and match "failed to load"."""
    for kind, client in clients(srv):
        status, message = raised(lambda: client.load_model("spare", config='{"max_batch_size": }'))
        assert status == INVALID[kind], (kind, status, message)
        assert message.startswith("failed to load 'spare', repository load parameter `config` is not valid JSON"), message
        client.close()


def test_an_unloaded_model_stays_in_the_index_as_unavailable(srv):
    for kind, client in clients(srv):
        client.load_model("spare")
        assert client.is_model_ready("spare")
        client.unload_model("spare")
        assert not client.is_model_ready("spare")
        row = index_rows(kind, client)["spare"]
        assert (row["state"], row["reason"]) == ("UNAVAILABLE", "unloaded"), (kind, row)
        expected = (NOT_FOUND[kind], "Request for unknown model: 'spare' is not found")
        assert raised(lambda: client.infer("spare", [mlp_input(kind)])) == expected
        client.close()


def test_a_non_decoupled_transaction_policy_loads(srv):
    for kind, client in clients(srv):
        client.load_model("nondec")
        assert client.infer("nondec", [mlp_input(kind)]).as_numpy("OUTPUT0").shape == (1, 4)
        client.close()


@pytest.mark.parametrize("name", sorted(UNSUPPORTED))
def test_a_config_ferroserve_cannot_honour_fails_its_load(srv, name):
    field = UNSUPPORTED[name][1]
    for kind, client in clients(srv):
        status, message = raised(lambda: client.load_model(name))
        assert status == INVALID[kind], (kind, status, message)
        assert message.startswith(f"failed to load '{name}': "), message
        assert field in message and "not supported by ferroserve" in message, message
        row = index_rows(kind, client)[name]
        assert row["state"] == "UNAVAILABLE", (kind, row)
        assert field in row["reason"] and "not supported by ferroserve" in row["reason"], (kind, row)
        assert not client.is_model_ready(name)
        status, message = raised(lambda: client.infer(name, [mlp_input(kind)]))
        assert status == UNAVAILABLE[kind] and field in message, (kind, status, message)
        client.close()
    http = httpclient.InferenceServerClient(srv.http_addr)
    assert http.infer("mlp", [mlp_input("http")]).as_numpy("OUTPUT0").shape == (1, 4)
    http.close()
