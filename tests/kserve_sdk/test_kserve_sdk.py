"""The KServe Python SDK against ferroserve: InferenceRESTClient (v1 and v2) and InferenceGRPCClient, the
latter on the gRPC port and on the HTTP port (which serves gRPC too).

Runs in its own pytest process: the SDK's gRPC stubs and tritonclient's register the same proto package.
"""
import asyncio

import numpy as np
import pytest
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig

from conftest import mlp_numpy


def run(coro):
    return asyncio.run(coro)


def mlp_request(x, binary=False):
    inp = InferInput(name="INPUT0", shape=list(x.shape), datatype="FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    return InferRequest(model_name="mlp", infer_inputs=[inp], request_id="k1")


@pytest.mark.parametrize("binary", [False, True])
def test_rest_v2(server, reference, binary):
    x = np.random.default_rng(3).standard_normal((4, 16)).astype(np.float32)

    async def go():
        client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0))
        try:
            assert await client.is_server_ready(server.http_url)
            assert await client.is_server_live(server.http_url)
            assert await client.is_model_ready(server.http_url, "mlp")
            assert not await client.is_model_ready(server.http_url, "missing")
            return await client.infer(server.http_url, mlp_request(x, binary), model_name="mlp")
        finally:
            await client.close()

    response = run(go())
    assert response.id == "k1"
    np.testing.assert_allclose(response.outputs[0].as_numpy(), mlp_numpy(reference["mlp"], x), rtol=1e-5, atol=1e-5)


def test_rest_v1(server, reference):
    ref = reference["mlp"]

    async def go():
        client = InferenceRESTClient(RESTConfig(protocol="v1", retries=0))
        try:
            assert await client.is_model_ready(server.http_url, "mlp")
            return await client.infer(server.http_url, {"instances": ref["INPUT0"].tolist()}, model_name="mlp")
        finally:
            await client.close()

    out = run(go())
    np.testing.assert_allclose(np.array(out["predictions"]), ref["OUTPUT0"], rtol=1e-5, atol=1e-5)


def test_rest_error_status(server):
    import httpx

    async def go():
        client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0))
        try:
            bad = InferInput(name="INPUT0", shape=[1, 3], datatype="FP32")
            bad.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32))
            await client.infer(server.http_url, InferRequest(model_name="mlp", infer_inputs=[bad]), model_name="mlp")
        finally:
            await client.close()

    with pytest.raises(httpx.HTTPStatusError) as err:
        run(go())
    assert err.value.response.status_code == 400


def grpc_address(server, port):
    """The gRPC port, or the HTTP port, which serves the same gRPC service (one Knative port for both)."""
    return server.grpc_addr if port == "grpc" else server.http_addr


@pytest.mark.parametrize("port", ["grpc", "http"])
def test_grpc(server, reference, port):
    x = np.random.default_rng(5).standard_normal((2, 16)).astype(np.float32)

    async def go():
        client = InferenceGRPCClient(grpc_address(server, port), retries=2)
        try:
            assert await client.is_server_ready()
            assert await client.is_model_ready("mlp")
            return await client.infer(mlp_request(x))
        finally:
            await client.close()

    response = run(go())
    np.testing.assert_allclose(response.outputs[0].as_numpy(), mlp_numpy(reference["mlp"], x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("port", ["grpc", "http"])
def test_grpc_bytes(server, port):
    async def go():
        client = InferenceGRPCClient(grpc_address(server, port), retries=2)
        try:
            inp = InferInput(name="TEXT", shape=[2], datatype="BYTES")
            inp.set_data_from_numpy(np.array([b"kserve", b"sdk"], dtype=np.object_))
            return await client.infer(InferRequest(model_name="strings", infer_inputs=[inp]))
        finally:
            await client.close()

    response = run(go())
    upper = next(o for o in response.outputs if o.name == "UPPER")
    assert [v if isinstance(v, bytes) else v.encode() for v in upper.as_numpy()] == [b"KSERVE", b"SDK"]
