"""Triton's logging extension over HTTP and gRPC with tritonclient: the settings read back under Triton's names,
a change takes effect in the running server's log, settings that cannot be honoured are refused with the reason,
and Triton's trace-settings calls are refused with theirs."""
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from server import Server

DEFAULTS = {"log_file": "", "log_info": True, "log_warning": True, "log_error": True, "log_verbose_level": 0,
            "log_format": "ISO8601"}


def grpc_settings(client):
    return {k: v[v["parameterChoice"]] if "parameterChoice" in v else next(iter(v.values()))
            for k, v in client.get_log_settings(as_json=True)["settings"].items()}


def bad_request(client, model):
    """A request whose refusal ferroserve logs at debug level only."""
    inp = grpcclient.InferInput("INPUT0", [1, 3], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32))
    with pytest.raises(InferenceServerException):
        client.infer(model, [inp])


def wait_for(s, text, present=True):
    for _ in range(50):
        if (text in s.logs()) == present:
            return
        time.sleep(0.1)
    raise AssertionError(f"{text!r} {'never' if present else 'still'} in the log:\n{s.logs()[-2000:]}")


def test_log_settings_read_and_change_the_running_servers_logging():
    s = Server("--model-control-mode", "explicit", "--load-model", "*")
    http = httpclient.InferenceServerClient(s.http_addr)
    g = grpcclient.InferenceServerClient(s.grpc_addr)
    try:
        assert "logging" in http.get_server_metadata()["extensions"]
        assert http.get_log_settings() == DEFAULTS
        assert grpc_settings(g) == DEFAULTS
        # Debug logs are off: a refused request leaves no line. (The server writes a request's log lines before it
        # answers, and an unload's before the unload call returns, so an absent line is not merely a late one.)
        bad_request(g, "mlp")
        assert "grpc request rejected" not in s.logs()
        # Verbose level 1 turns ferroserve's debug logs on, at once.
        assert http.update_log_settings({"log_verbose_level": 1}) == dict(DEFAULTS, log_verbose_level=1)
        assert grpc_settings(g)["log_verbose_level"] == 1
        bad_request(g, "mlp")
        wait_for(s, "grpc request rejected")
        # Back over gRPC; then warnings and errors only: an info line (a model unloaded) no longer shows.
        g.update_log_settings({"log_verbose_level": 0, "log_info": False})
        assert http.get_log_settings() == dict(DEFAULTS, log_info=False)
        http.unload_model("strings")
        assert "model unloaded" not in s.logs()
        http.update_log_settings({"log_info": True})
        http.load_model("strings")
        http.unload_model("strings")
        wait_for(s, "model unloaded")
        # What cannot be honoured is refused, naming why, and changes nothing.
        for bad, why in (({"log_warning": False}, "needs"), ({"log_file": "/tmp/ferroserve.log"}, "stderr"),
                         ({"log_format": "default"}, "ISO 8601"), ({"log_verbose_level": -1}, "log_verbose_level"),
                         ({"log_colour": True}, "unknown")):
            with pytest.raises(InferenceServerException) as err:
                http.update_log_settings(bad)
            assert err.value.status() == "400" and why in err.value.message(), (bad, err.value.message())
        with grpc.insecure_channel(s.grpc_addr) as channel:  # tritonclient types each value by its name
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            request = service_pb2.LogSettingsRequest()
            request.settings["log_error"].string_param = "yes"
            with pytest.raises(grpc.RpcError) as err:
                stub.LogSettings(request)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "boolean" in err.value.details()
        assert http.get_log_settings() == DEFAULTS
        # Trace settings: refused with the reason, not a bare 404 / UNIMPLEMENTED.
        with pytest.raises(InferenceServerException) as err:
            http.get_trace_settings()
        assert err.value.status() == "501" and "OTLP" in err.value.message()
        with pytest.raises(InferenceServerException) as err:
            g.get_trace_settings()
        assert err.value.status() == "StatusCode.UNIMPLEMENTED" and "OTLP" in err.value.message()
    finally:
        http.close()
        g.close()
        assert s.stop() == 0


def test_log_settings_changes_need_admin_access_where_it_is_guarded():
    s = Server("--admin-token", "sesame-open")
    try:
        http = httpclient.InferenceServerClient(s.http_addr)
        assert http.get_log_settings() == DEFAULTS
        with pytest.raises(InferenceServerException) as err:
            http.update_log_settings({"log_info": False})
        assert err.value.status() in ("401", "403")
        assert http.update_log_settings({"log_info": False}, headers={"Authorization": "Bearer sesame-open"})["log_info"] is False
        g = grpcclient.InferenceServerClient(s.grpc_addr)
        with pytest.raises(InferenceServerException) as err:
            g.update_log_settings({"log_info": True})
        assert err.value.status() in ("StatusCode.UNAUTHENTICATED", "StatusCode.PERMISSION_DENIED")
        g.update_log_settings({"log_info": True}, headers={"authorization": "Bearer sesame-open"})
        assert grpc_settings(g)["log_info"] is True
        http.close()
        g.close()
    finally:
        assert s.stop() == 0
