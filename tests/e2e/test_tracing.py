"""Distributed tracing: with an OTLP endpoint set, a request carrying a W3C `traceparent` is exported to a real
OTLP receiver (HTTP and gRPC transports) as a `request` span under the caller's span, with `decode`, `queue`,
`execute` and `encode` children in the caller's trace; the caller's sampled flag and the sampling ratio are
obeyed, and spans still buffered at SIGTERM are flushed before the process exits."""
import os
import secrets

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from otlp_receiver import OtlpReceiver
from server import Server

FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "100"}


@pytest.fixture
def receiver():
    r = OtlpReceiver()
    yield r
    r.close()


def traceparent(sampled=True):
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}"


def infer_http(server, headers):
    client = httpclient.InferenceServerClient(server.http_addr)
    inp = httpclient.InferInput("INPUT0", [1, 16], "FP32")
    inp.set_data_from_numpy(np.ones((1, 16), dtype=np.float32))
    client.infer("mlp", [inp], headers=headers)
    client.close()


def infer_grpc(server, headers):
    client = grpcclient.InferenceServerClient(server.grpc_addr)
    inp = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
    inp.set_data_from_numpy(np.ones((1, 16), dtype=np.float32))
    client.infer("mlp", [inp], headers=headers)
    client.close()


def check_request_trace(spans, caller_span_id, path):
    by_name = {s["name"]: s for s in spans}
    root = [s for s in spans if s["parent_span_id"] == caller_span_id]
    assert len(root) == 1, spans
    root = root[0]
    assert root["name"] == f"POST {path}"
    assert root["kind"] == 2  # SPAN_KIND_SERVER
    assert root["attributes"]["id"]  # the request id, as in the logs
    assert root["attributes"]["http.response.status_code"] == 200
    assert root["resource"]["service.name"] == "ferroserve"
    for child in ("decode", "queue", "execute", "encode"):
        assert child in by_name, sorted(by_name)
        assert by_name[child]["parent_span_id"] == root["span_id"]
        assert root["start"] <= by_name[child]["start"] <= by_name[child]["end"] <= root["end"]
    assert by_name["execute"]["attributes"]["batch_size"] == 1
    assert by_name["queue"]["end"] <= by_name["execute"]["start"]


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_spans_reach_the_collector_in_the_callers_trace(receiver, protocol):
    endpoint = receiver.http_url if protocol == "http/protobuf" else receiver.grpc_url
    s = Server("--otlp-endpoint", endpoint, "--otlp-protocol", protocol, env=FAST_EXPORT)
    try:
        trace_id, span_id, header = traceparent()
        infer_http(s, {"traceparent": header})
        check_request_trace(receiver.trace(trace_id, 5), span_id, "/v2/models/mlp/infer")
        trace_id, span_id, header = traceparent()
        infer_grpc(s, {"traceparent": header})
        check_request_trace(
            receiver.trace(trace_id, 5), span_id, "/inference.GRPCInferenceService/ModelInfer"
        )
    finally:
        s.stop()


def test_the_callers_decision_and_the_ratio_are_obeyed(receiver):
    # Ratio 0: requests without a traceparent are never traced; a caller that samples still is, and one that
    # does not sample is not.
    s = Server("--otlp-endpoint", receiver.http_url, "--trace-sample-ratio", "0", env=FAST_EXPORT)
    try:
        unsampled_id, _, unsampled = traceparent(sampled=False)
        infer_http(s, {"traceparent": unsampled})
        for _ in range(5):
            infer_http(s, {})
        sampled_id, span_id, sampled = traceparent()
        infer_grpc(s, {"traceparent": sampled})
        check_request_trace(receiver.trace(sampled_id, 5), span_id, "/inference.GRPCInferenceService/ModelInfer")
    finally:
        s.stop()
    # Everything was flushed at stop: the only trace is the sampled caller's.
    assert {sp["trace_id"] for sp in receiver.all()} == {sampled_id}


def test_a_request_without_traceparent_starts_its_own_trace(receiver):
    s = Server("--otlp-endpoint", receiver.http_url, env=FAST_EXPORT)
    try:
        infer_http(s, {})
    finally:
        s.stop()
    spans = receiver.all()
    roots = [sp for sp in spans if sp["parent_span_id"] == ""]
    assert len(roots) == 1 and roots[0]["name"] == "POST /v2/models/mlp/infer"
    assert {sp["trace_id"] for sp in spans} == {roots[0]["trace_id"]}
    assert len(spans) == 5


def test_buffered_spans_are_flushed_on_sigterm(receiver):
    # A schedule delay far longer than the test: only the shutdown flush can deliver the spans.
    s = Server("--otlp-endpoint", receiver.http_url, env={"OTEL_BSP_SCHEDULE_DELAY": "600000"})
    trace_id, span_id, header = traceparent()
    try:
        infer_http(s, {"traceparent": header})
        assert receiver.trace(trace_id, 1, timeout=0.5) == []
    finally:
        assert s.stop() == 0
    check_request_trace(receiver.trace(trace_id, 5, timeout=5), span_id, "/v2/models/mlp/infer")


def test_otlp_endpoint_from_the_standard_environment(receiver):
    s = Server(env=dict(FAST_EXPORT, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.http_url, OTEL_SERVICE_NAME="scorer"))
    try:
        trace_id, span_id, header = traceparent()
        infer_http(s, {"traceparent": header})
        spans = receiver.trace(trace_id, 5)
        check_request_trace([dict(sp, resource={"service.name": "ferroserve"}) for sp in spans], span_id,
                            "/v2/models/mlp/infer")
        assert spans[0]["resource"]["service.name"] == "scorer"
    finally:
        s.stop()
