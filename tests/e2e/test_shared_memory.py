"""Triton's system shared memory extension, end to end over HTTP and gRPC with tritonclient's own
shared-memory utilities (`tritonclient.utils.shared_memory`): regions registered, listed and unregistered; inputs
read from and outputs written into regions (at offsets, next to in-band tensors, BYTES in the length-prefixed
layout), checked against numpy; every client mistake answered as one (HTTP 400, gRPC INVALID_ARGUMENT) naming the
region or tensor, with the server serving on; and regions unregistered while requests are using them.

Each POSIX shared memory object gets a unique key (pid + random suffix); the `new_object` fixture unregisters every
region and unlinks its objects whatever the test's outcome."""
import base64
import http.client
import json
import os
import struct
import threading
import uuid

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException, serialize_byte_tensor, serialized_byte_size

from conftest import mlp_numpy

TOL = dict(rtol=1e-5, atol=1e-5)
# What tritonclient reports as `status()` for a client error: the HTTP code, or str(grpc.StatusCode).
CLIENT_ERROR = {"http": {"400"}, "grpc": {"StatusCode.INVALID_ARGUMENT"}}


class Protocol:
    """One transport's tritonclient, and the few places where HTTP and gRPC answers differ in shape."""

    def __init__(self, kind, server):
        self.kind = kind
        self.lib = httpclient if kind == "http" else grpcclient
        self.addr = server.http_addr if kind == "http" else server.grpc_addr
        self.client = self.connect()

    def connect(self):
        return self.lib.InferenceServerClient(self.addr)

    def status(self, name=""):
        """The registered regions as [{name, key, offset, byte_size}] sorted by name."""
        if self.kind == "http":
            regions = self.client.get_system_shared_memory_status(name)
            assert isinstance(regions, list), regions
        else:
            regions = []
            for map_key, r in self.client.get_system_shared_memory_status(name).regions.items():
                assert map_key == r.name, (map_key, r)
                regions.append({"name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size})
        return sorted(regions, key=lambda r: r["name"])

    def extensions(self):
        meta = self.client.get_server_metadata()
        return list(meta["extensions"] if self.kind == "http" else meta.extensions)

    def output(self, result, name):
        """(datatype, shape, parameters as plain values, whether the response carries the tensor's data)."""
        if self.kind == "http":
            out = result.get_output(name)
            assert out is not None, result.get_response()
            params = out.get("parameters", {})
            return out["datatype"], list(out["shape"]), params, "data" in out or "binary_data_size" in params
        response = result.get_response()
        names = [o.name for o in response.outputs]
        assert name in names, response
        i = names.index(name)
        out = response.outputs[i]
        params = {k: getattr(v, v.WhichOneof("parameter_choice")) for k, v in out.parameters.items()}
        raw = response.raw_output_contents
        # tritonclient finds an output's raw contents by the output's position: one entry per output (empty for
        # an output in shared memory), as Triton answers, or none at all.
        assert not raw or len(raw) == len(response.outputs), (len(raw), names)
        return out.datatype, list(out.shape), params, bool(raw and raw[i]) or bool(out.contents.ListFields())


@pytest.fixture(scope="module", params=["http", "grpc"])
def p(request, server):
    proto = Protocol(request.param, server)
    yield proto
    proto.client.close()


@pytest.fixture
def new_object(p):
    """`new_object(byte_size, fill=0)` -> (handle, key): a fresh POSIX shared memory object filled with `fill`."""
    made = []

    def make(byte_size, fill=0):
        key = f"/ferroserve_test_{os.getpid()}_{uuid.uuid4().hex[:12]}"
        handle = shm.create_shared_memory_region(key, key, byte_size, create_only=True)
        made.append(handle)
        write(handle, np.full(byte_size, fill, dtype=np.uint8))
        return handle, key

    try:
        yield make
    finally:
        try:
            p.client.unregister_system_shared_memory()
        except InferenceServerException:
            pass  # the test's own failure says more
        for handle in made:
            shm.destroy_shared_memory_region(handle)


def write(handle, array, offset=0):
    shm.set_shared_memory_region(handle, [array], offset=offset)


def read(handle, dtype, shape, offset=0):
    # A copy: a view would keep the mapping exported and the object could not be closed.
    return shm.get_contents_as_numpy(handle, dtype, shape, offset=offset).copy()


def in_band(p, name, array, datatype):
    inp = p.lib.InferInput(name, list(array.shape), datatype)
    inp.set_data_from_numpy(array)
    return inp


def shm_input(p, name, shape, datatype, region, byte_size, offset=0):
    inp = p.lib.InferInput(name, list(shape), datatype)
    inp.set_shared_memory(region, byte_size, offset)
    return inp


def shm_output(p, name, region, byte_size, offset=0):
    out = p.lib.InferRequestedOutput(name)
    out.set_shared_memory(region, byte_size, offset)
    return out


def mlp_in(p, region, batch, offset=0, byte_size=None):
    return shm_input(p, "INPUT0", [batch, 16], "FP32", region, batch * 64 if byte_size is None else byte_size, offset)


def mlp_out(p, region, batch, offset=0, byte_size=None):
    return shm_output(p, "OUTPUT0", region, batch * 16 if byte_size is None else byte_size, offset)


def assert_in_region(p, result, name, datatype, shape, region):
    """The response describes an output written to shared memory, without its data."""
    got_datatype, got_shape, params, has_data = p.output(result, name)
    assert (got_datatype, got_shape) == (datatype, shape)
    assert not has_data, f"`{name}` went to shared memory; the response must not carry it too"
    # As Triton: no parameters on such an output (Triton's C++ HTTP client, perf_analyzer's, reads any output
    # `parameters` object for `binary_data_size` and fails without it).
    assert not params, params


def client_error(p, call, *names, also=()):
    """`call` fails as a client error whose message names one of `names`; returns the message."""
    with pytest.raises(InferenceServerException) as caught:
        call()
    status, message = caught.value.status(), caught.value.message()
    assert status in CLIENT_ERROR[p.kind] | set(also), (status, message)
    assert any(n in message for n in names), f"none of {names} named in {message!r}"
    return message


def assert_still_serving(p, server, reference):
    assert server.proc.poll() is None, server.logs()
    x = np.linspace(-1, 1, 32, dtype=np.float32).reshape(2, 16)
    result = p.client.infer("mlp", [in_band(p, "INPUT0", x, "FP32")])
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), mlp_numpy(reference["mlp"], x), **TOL)


def test_extension_is_advertised(p):
    extensions = p.extensions()
    assert "system_shared_memory" in extensions
    assert "cuda_shared_memory" not in extensions


def test_register_status_unregister_one_and_all(p, new_object):
    h1, key1 = new_object(64)
    h2, key2 = new_object(128)
    p.client.register_system_shared_memory("alpha", key1, 64)
    p.client.register_system_shared_memory("beta", key2, 64, offset=32)
    alpha = {"name": "alpha", "key": key1, "offset": 0, "byte_size": 64}
    beta = {"name": "beta", "key": key2, "offset": 32, "byte_size": 64}
    assert p.status() == [alpha, beta]
    assert p.status("beta") == [beta]
    p.client.unregister_system_shared_memory("alpha")
    assert p.status() == [beta]
    refused_with(p, lambda: p.status("alpha"), UNKNOWN_REGION, "alpha")
    p.client.unregister_system_shared_memory("alpha")  # as in Triton, unregistering an unknown name is a no-op
    # A name is free again once unregistered; two regions may map the same object.
    p.client.register_system_shared_memory("alpha", key2, 48, offset=16)
    p.client.register_system_shared_memory("gamma", key1, 16, offset=48)
    assert [r["name"] for r in p.status()] == ["alpha", "beta", "gamma"]
    assert p.status("alpha") == [{"name": "alpha", "key": key2, "offset": 16, "byte_size": 48}]
    p.client.unregister_system_shared_memory()
    assert p.status() == []


@pytest.mark.parametrize("where", ["input", "output", "both"])
def test_mlp_through_regions_matches_numpy(p, reference, new_object, where):
    ref, batch = reference["mlp"], 5
    in_handle, in_key = new_object(batch * 64)
    out_handle, out_key = new_object(batch * 16)
    p.client.register_system_shared_memory("mlp_in", in_key, batch * 64)
    p.client.register_system_shared_memory("mlp_out", out_key, batch * 16)
    rng = np.random.default_rng(3)
    for _ in range(2):  # new data each round: the region is read at each request, not once at registration
        x = rng.standard_normal((batch, 16)).astype(np.float32)
        write(in_handle, x)
        write(out_handle, np.full((batch, 4), np.nan, dtype=np.float32))
        inp = mlp_in(p, "mlp_in", batch) if where != "output" else in_band(p, "INPUT0", x, "FP32")
        outputs = [mlp_out(p, "mlp_out", batch)] if where != "input" else None
        result = p.client.infer("mlp", [inp], outputs=outputs)
        if where == "input":
            got = result.as_numpy("OUTPUT0")
        else:
            assert_in_region(p, result, "OUTPUT0", "FP32", [batch, 4], "mlp_out")
            got = read(out_handle, np.float32, [batch, 4])
        np.testing.assert_allclose(got, mlp_numpy(ref, x), **TOL)


def test_two_inputs_at_offsets_in_one_region(p, reference, new_object):
    """A and B share a region registered at offset 16 of its object, each at its own offset in the region; C comes
    in band after them (over gRPC, the only entry of raw_input_contents); SUM goes to an offset of another region
    and the bytes around it stay as they were."""
    ref = reference["mixed"]
    handle, key = new_object(256, fill=0xFF)
    write(handle, ref["A"], offset=16 + 8)
    write(handle, ref["B"], offset=16 + 40)
    p.client.register_system_shared_memory("mixed_in", key, 224, offset=16)
    out_handle, out_key = new_object(128, fill=0xAB)
    p.client.register_system_shared_memory("mixed_out", out_key, 100, offset=8)
    inputs = [
        shm_input(p, "A", [2, 4], "FP32", "mixed_in", 32, offset=8),
        shm_input(p, "B", [2, 4], "INT64", "mixed_in", 64, offset=40),
        in_band(p, "C", ref["C"], "FP16"),
    ]
    outputs = [shm_output(p, "SUM", "mixed_out", 32, offset=12),
               p.lib.InferRequestedOutput("B_TIMES_2"), p.lib.InferRequestedOutput("C_HALF")]
    result = p.client.infer("mixed", inputs, outputs=outputs)
    assert_in_region(p, result, "SUM", "FP32", [2, 4], "mixed_out")
    np.testing.assert_allclose(read(out_handle, np.float32, [2, 4], offset=8 + 12), ref["SUM"], rtol=1e-6)
    around = read(out_handle, np.uint8, [128])
    assert (around[:20] == 0xAB).all() and (around[52:] == 0xAB).all(), around
    np.testing.assert_array_equal(result.as_numpy("B_TIMES_2"), ref["B_TIMES_2"])
    np.testing.assert_allclose(result.as_numpy("C_HALF"), ref["C_HALF"], rtol=1e-3)


def test_output_in_region_before_in_band_outputs(p, reference, new_object):
    """The first requested output goes to shared memory, the rest come back in the response: their values check
    that each in-band output is found where the client looks (over gRPC, raw_output_contents by position)."""
    ref = reference["mixed"]
    handle, key = new_object(64, fill=0xAB)
    p.client.register_system_shared_memory("b2", key, 64)
    inputs = [in_band(p, "A", ref["A"], "FP32"), in_band(p, "B", ref["B"], "INT64"), in_band(p, "C", ref["C"], "FP16")]
    outputs = [shm_output(p, "B_TIMES_2", "b2", 64)]
    outputs += [p.lib.InferRequestedOutput(n) for n in ("SUM", "A_POSITIVE", "C_HALF")]
    result = p.client.infer("mixed", inputs, outputs=outputs)
    assert_in_region(p, result, "B_TIMES_2", "INT64", [2, 4], "b2")
    np.testing.assert_array_equal(read(handle, np.int64, [2, 4]), ref["B_TIMES_2"])
    np.testing.assert_allclose(result.as_numpy("SUM"), ref["SUM"], rtol=1e-6)
    np.testing.assert_array_equal(result.as_numpy("A_POSITIVE"), ref["A_POSITIVE"])
    np.testing.assert_allclose(result.as_numpy("C_HALF"), ref["C_HALF"], rtol=1e-3)


def test_unaligned_offsets(p, reference, new_object):
    """Triton puts no alignment rule on offsets: FP32 read from and written to odd addresses of one region."""
    ref = reference["mlp"]
    x = np.random.default_rng(5).standard_normal((2, 16)).astype(np.float32)
    handle, key = new_object(200, fill=0xEE)
    write(handle, x, offset=1 + 2)
    p.client.register_system_shared_memory("odd", key, 190, offset=1)
    result = p.client.infer("mlp", [mlp_in(p, "odd", 2, offset=2)], outputs=[mlp_out(p, "odd", 2, offset=141)])
    assert_in_region(p, result, "OUTPUT0", "FP32", [2, 4], "odd")
    np.testing.assert_allclose(read(handle, np.float32, [2, 4], offset=1 + 141), mlp_numpy(ref, x), **TOL)
    np.testing.assert_array_equal(read(handle, np.float32, [2, 16], offset=3), x)  # the input was left alone


def test_reregistered_name_maps_the_new_object(p, reference, new_object):
    ref = reference["mlp"]
    x1, x2 = np.full((1, 16), 0.25, dtype=np.float32), np.full((1, 16), -0.75, dtype=np.float32)
    h1, key1 = new_object(64)
    h2, key2 = new_object(64)
    write(h1, x1)
    write(h2, x2)
    p.client.register_system_shared_memory("swap", key1, 64)
    got = p.client.infer("mlp", [mlp_in(p, "swap", 1)]).as_numpy("OUTPUT0")
    np.testing.assert_allclose(got, mlp_numpy(ref, x1), **TOL)
    p.client.unregister_system_shared_memory("swap")
    p.client.register_system_shared_memory("swap", key2, 64)
    got = p.client.infer("mlp", [mlp_in(p, "swap", 1)]).as_numpy("OUTPUT0")
    np.testing.assert_allclose(got, mlp_numpy(ref, x2), **TOL)


def test_bytes_through_regions(p, new_object):
    """BYTES in and out of shared memory in the binary layout (4-byte little-endian length, then the bytes)."""
    text = np.array([b"hello", b"", b"Mixed Case 42", b"ferroserve"], dtype=np.object_)
    serialized = serialize_byte_tensor(text)
    size = serialized_byte_size(serialized)
    in_handle, in_key = new_object(size + 8, fill=0xFF)
    write(in_handle, serialized, offset=8)
    p.client.register_system_shared_memory("text_in", in_key, size + 8)
    out_handle, out_key = new_object(256, fill=0xFF)
    p.client.register_system_shared_memory("upper_out", out_key, 256)
    inp = shm_input(p, "TEXT", [4, 1], "BYTES", "text_in", size, offset=8)
    outputs = [shm_output(p, "UPPER", "upper_out", 256), p.lib.InferRequestedOutput("ECHO")]
    result = p.client.infer("strings", [inp], outputs=outputs)
    assert_in_region(p, result, "UPPER", "BYTES", [4, 1], "upper_out")
    assert shm.get_contents_as_numpy(out_handle, np.object_, [4, 1]).ravel().tolist() == [t.upper() for t in text]
    assert result.as_numpy("ECHO").ravel().tolist() == list(text)


# Client mistakes: each case makes its mistake and checks the answer; the test then checks the server serves on.

# Triton's statuses for a region name not registered (NOT_FOUND) and for one registered twice (ALREADY_EXISTS,
# which its HTTP server answers with 400).
UNKNOWN_REGION = {"http": "404", "grpc": "StatusCode.NOT_FOUND"}
TAKEN_REGION = {"http": "400", "grpc": "StatusCode.ALREADY_EXISTS"}


def refused_with(p, call, statuses, name):
    """`call` fails with `statuses[p.kind]` and a message naming `name`; returns the message."""
    with pytest.raises(InferenceServerException) as caught:
        call()
    status, message = caught.value.status(), caught.value.message()
    assert status == statuses[p.kind], (status, message)
    assert f"'{name}'" in message, message
    return message


def _unregistered_input(p, make, tmp_path):
    message = refused_with(
        p, lambda: p.client.infer("mlp", [mlp_in(p, "never_registered", 1)]), UNKNOWN_REGION, "never_registered"
    )
    assert "Unable to find shared memory region: 'never_registered'" in message


def _unregistered_output(p, make, tmp_path):
    inp = in_band(p, "INPUT0", np.zeros((1, 16), dtype=np.float32), "FP32")
    out = mlp_out(p, "never_registered", 1)
    refused_with(p, lambda: p.client.infer("mlp", [inp], outputs=[out]), UNKNOWN_REGION, "never_registered")


def _small_region(p, make):
    handle, key = make(64)
    p.client.register_system_shared_memory("small", key, 64)
    return handle


def _input_past_region_end(p, make, tmp_path):
    _small_region(p, make)
    client_error(p, lambda: p.client.infer("mlp", [mlp_in(p, "small", 1, offset=16)]), "small", "INPUT0")


def _input_offset_overflows(p, make, tmp_path):
    _small_region(p, make)
    client_error(p, lambda: p.client.infer("mlp", [mlp_in(p, "small", 1, offset=2**63 - 8)]), "small", "INPUT0")


def _input_negative_offset(p, make, tmp_path):
    _small_region(p, make)
    client_error(p, lambda: p.client.infer("mlp", [mlp_in(p, "small", 1, offset=-8)]), "small", "INPUT0")


def _output_past_region_end(p, make, tmp_path):
    _small_region(p, make)
    inp = in_band(p, "INPUT0", np.zeros((1, 16), dtype=np.float32), "FP32")
    out = mlp_out(p, "small", 1, offset=56)
    client_error(p, lambda: p.client.infer("mlp", [inp], outputs=[out]), "small", "OUTPUT0")


def _output_region_too_small(p, make, tmp_path):
    _small_region(p, make)
    inp = in_band(p, "INPUT0", np.zeros((1, 16), dtype=np.float32), "FP32")
    client_error(p, lambda: p.client.infer("mlp", [inp], outputs=[mlp_out(p, "small", 1, byte_size=8)]), "OUTPUT0")


def _input_byte_size_short(p, make, tmp_path):
    _small_region(p, make)
    client_error(p, lambda: p.client.infer("mlp", [mlp_in(p, "small", 1, byte_size=60)]), "INPUT0")


def _input_byte_size_long(p, make, tmp_path):
    handle, key = make(128)
    p.client.register_system_shared_memory("roomy", key, 128)
    client_error(p, lambda: p.client.infer("mlp", [mlp_in(p, "roomy", 1, byte_size=68)]), "INPUT0")


def _bytes_length_past_end(p, make, tmp_path):
    handle, key = make(16)
    write(handle, np.frombuffer(struct.pack("<I", 100) + b"ab", dtype=np.uint8))
    p.client.register_system_shared_memory("text", key, 16)
    inp = shm_input(p, "TEXT", [1, 1], "BYTES", "text", 6)
    client_error(p, lambda: p.client.infer("strings", [inp]), "TEXT")


def _object_shrunk_after_registration(p, make, tmp_path):
    # The client truncates its object under a registered region: what now lies past the object's end cannot be
    # read (through a mapping it would be SIGBUS, the whole server down); an output is still written inside the
    # registered region, which extends the object again no further than the region's end.
    handle, key = make(128)
    p.client.register_system_shared_memory("shrunk", key, 128)
    path = os.path.join("/dev/shm", key.lstrip("/"))
    os.truncate(path, 16)
    client_error(p, lambda: p.client.infer("mlp", [mlp_in(p, "shrunk", 1)]), "shrunk", "INPUT0")
    inp = in_band(p, "INPUT0", np.zeros((1, 16), dtype=np.float32), "FP32")
    p.client.infer("mlp", [inp], outputs=[mlp_out(p, "shrunk", 1, offset=64)])
    assert 16 < os.path.getsize(path) <= 128


def _refused_registration(p, name, key, byte_size, offset=0):
    client_error(p, lambda: p.client.register_system_shared_memory(name, key, byte_size, offset=offset), name, key)
    assert name not in [r["name"] for r in p.status()]


def _missing_key(p, make, tmp_path):
    _refused_registration(p, "ghost", f"/ferroserve_test_{os.getpid()}_no_such_key", 64)


def _traversal_key(p, make, tmp_path):
    _refused_registration(p, "escape", "/../etc/passwd", 16)


def _traversal_key_deep(p, make, tmp_path):
    _refused_registration(p, "escape", "/../../etc/passwd", 16)


def _traversal_key_to_a_real_file(p, make, tmp_path):
    # A file that exists and is large enough: a key joined onto /dev/shm would reach it.
    victim = tmp_path / "victim"
    victim.write_bytes(b"\0" * 4096)
    _refused_registration(p, "escape", "/../.." + str(victim), 64)
    assert victim.read_bytes() == b"\0" * 4096


def _register_past_object_end(p, make, tmp_path):
    handle, key = make(64)
    _refused_registration(p, "oversized", key, 128)


def _register_offset_past_object_end(p, make, tmp_path):
    handle, key = make(64)
    _refused_registration(p, "oversized", key, 8, offset=64)


def _register_offset_overflows(p, make, tmp_path):
    handle, key = make(64)
    _refused_registration(p, "oversized", key, 16, offset=2**64 - 8)


def _register_twice(p, make, tmp_path):
    h1, key1 = make(64)
    h2, key2 = make(64)
    p.client.register_system_shared_memory("dup", key1, 64)
    refused_with(p, lambda: p.client.register_system_shared_memory("dup", key2, 64), TAKEN_REGION, "dup")
    message = refused_with(p, lambda: p.client.register_system_shared_memory("dup", key1, 64), TAKEN_REGION, "dup")
    assert message == "shared memory region 'dup' already in manager", message
    assert p.status("dup") == [{"name": "dup", "key": key1, "offset": 0, "byte_size": 64}]


MISTAKES = [
    _unregistered_input, _unregistered_output, _input_past_region_end, _input_offset_overflows,
    _input_negative_offset, _output_past_region_end, _output_region_too_small, _input_byte_size_short,
    _input_byte_size_long, _bytes_length_past_end, _object_shrunk_after_registration, _missing_key, _traversal_key,
    _traversal_key_deep, _traversal_key_to_a_real_file, _register_past_object_end, _register_offset_past_object_end,
    _register_offset_overflows, _register_twice,
]


@pytest.mark.parametrize("mistake", MISTAKES, ids=[m.__name__.strip("_") for m in MISTAKES])
def test_client_mistakes_are_client_errors(p, server, reference, new_object, tmp_path, mistake):
    mistake(p, new_object, tmp_path)
    assert_still_serving(p, server, reference)


def test_http_register_body_is_validated(server):
    """Malformed register bodies over plain HTTP: 400 with a JSON `error`, and nothing registered."""
    key = f"/ferroserve_test_{os.getpid()}_{uuid.uuid4().hex[:12]}"
    handle = shm.create_shared_memory_region(key, key, 64, create_only=True)
    host, port = server.http_addr.split(":")
    try:
        for body in (b"not json", json.dumps({"offset": 0, "byte_size": 64}), json.dumps({"key": key, "offset": 0}),
                     json.dumps({"key": key, "offset": -1, "byte_size": 64}),
                     json.dumps({"key": key, "offset": 0, "byte_size": "64"}), json.dumps([key, 0, 64])):
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
            conn.request("POST", "/v2/systemsharedmemory/region/raw/register", body=body,
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            conn.close()
            assert resp.status == 400, (body, resp.status, data)
            assert isinstance(json.loads(data)["error"], str), data
    finally:
        client = httpclient.InferenceServerClient(server.http_addr)
        registered = [r["name"] for r in client.get_system_shared_memory_status()]
        client.unregister_system_shared_memory("raw")
        client.close()
        shm.destroy_shared_memory_region(handle)
    assert "raw" not in registered


def test_cuda_shared_memory_is_refused_with_a_reason(p):
    """Registering a CUDA region is refused with the reason. As on a Triton without GPUs there is never a CUDA
    region: status lists none, a named one is not found, and unregistering succeeds, because Triton's own
    shared-memory example programs unregister every CUDA region before they start."""
    refused = {"501", "400"} if p.kind == "http" else {"StatusCode.UNIMPLEMENTED"}
    raw_handle = base64.b64encode(bytes(64)).decode()
    with pytest.raises(InferenceServerException) as caught:
        p.client.register_cuda_shared_memory("gpu", raw_handle, 0, 64)
    assert caught.value.status() in refused, (caught.value.status(), caught.value.message())
    assert "cuda shared memory is not supported" in caught.value.message().lower(), caught.value.message()
    p.client.unregister_cuda_shared_memory()
    p.client.unregister_cuda_shared_memory("gpu")
    status = p.client.get_cuda_shared_memory_status()
    assert (status if p.kind == "http" else list(status.regions)) == []
    message = refused_with(p, lambda: p.client.get_cuda_shared_memory_status("gpu"), UNKNOWN_REGION, "gpu")
    assert "cuda shared memory region: 'gpu'" in message, message


def test_unregister_while_requests_run(p, server, reference, new_object):
    """8 threads run 25 requests each (200 in all), every input read from one region at its own offset and every
    output written to the thread's own region. After 5 requests each, the input region is unregistered while they
    run, then all regions; each thread's last request starts after that. Every request succeeds with its own
    correct values or fails as a client error naming its region; the server serves on."""
    ref, threads, batch = reference["mlp"], 8, 2
    xs = np.random.default_rng(17).standard_normal((threads, batch, 16)).astype(np.float32)
    expected = [mlp_numpy(ref, x) for x in xs]
    in_handle, in_key = new_object(xs.nbytes)
    write(in_handle, xs)
    p.client.register_system_shared_memory("shared_in", in_key, xs.nbytes)
    outs = []
    for i in range(threads):
        handle, key = new_object(batch * 16)
        p.client.register_system_shared_memory(f"out_{i}", key, batch * 16)
        outs.append(handle)
    started = threading.Barrier(threads + 1, timeout=120)
    unregistered = threading.Event()
    logs = [[] for _ in range(threads)]

    def worker(i):
        client = p.connect()

        def once():
            write(outs[i], np.full((batch, 4), np.nan, dtype=np.float32))
            try:
                client.infer("mlp", [mlp_in(p, "shared_in", batch, offset=i * xs[i].nbytes)],
                             outputs=[mlp_out(p, f"out_{i}", batch)])
            except InferenceServerException as e:
                logs[i].append(("error", e.status(), e.message()))
                return
            got = read(outs[i], np.float32, [batch, 4])
            logs[i].append(("ok", bool(np.allclose(got, expected[i], **TOL)), None))

        try:
            for _ in range(5):
                once()
            started.wait()
            for _ in range(19):
                once()
            unregistered.wait(timeout=120)
            once()
        except BaseException as e:  # noqa: B902 - reported below, with the thread's log
            logs[i].append(("crash", repr(e), None))
            started.abort()
        finally:
            client.close()

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    try:
        started.wait()
        p.client.unregister_system_shared_memory("shared_in")
        p.client.unregister_system_shared_memory()
    except threading.BrokenBarrierError:
        pass  # a worker crashed: its log says how
    finally:
        unregistered.set()
        for t in pool:
            t.join(timeout=120)
    assert not any(t.is_alive() for t in pool), "requests hung"
    for i, log in enumerate(logs):
        assert len(log) == 25, (i, log)
        assert all(kind == "ok" and correct for kind, correct, _ in log[:5]), (i, log[:5])
        for kind, detail, message in log:
            if kind == "ok":
                assert detail, f"thread {i}: wrong values in its output region"
            else:
                assert kind == "error", (i, kind, detail)
                assert detail in CLIENT_ERROR[p.kind] | {UNKNOWN_REGION[p.kind]}, (i, detail, message)
                assert "shared_in" in message or f"out_{i}" in message, (i, message)
        assert log[-1][0] == "error", (i, log[-1])
    assert p.status() == []
    assert_still_serving(p, server, reference)


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_shared_memory_counts_against_the_inflight_budget(kind, reference):
    """Tensors read from or written to regions are charged to --max-inflight-bytes like tensors in a body: a request
    whose regions alone pass the whole budget is refused (400 / INVALID_ARGUMENT naming the flag), a small one
    runs, and the server serves on."""
    from server import Server

    s = Server("--max-inflight-bytes", "65536")
    handles = []
    try:
        proto = Protocol(kind, s)
        rows = 1024  # 64 KiB in, 16 KiB out: past the 64 KiB budget together
        for role, size in (("in", rows * 64), ("out", rows * 16)):
            key = f"/ferroserve_test_{os.getpid()}_{uuid.uuid4().hex[:12]}"
            handles.append(shm.create_shared_memory_region(key, key, size, create_only=True))
            proto.client.register_system_shared_memory(f"budget_{role}", key, size)
        with pytest.raises(InferenceServerException) as err:
            proto.client.infer("mlp", [mlp_in(proto, "budget_in", rows)], outputs=[mlp_out(proto, "budget_out", rows)])
        assert err.value.status() in CLIENT_ERROR[kind], err.value
        assert "--max-inflight-bytes" in err.value.message(), err.value
        x = np.random.default_rng(5).standard_normal((4, 16)).astype(np.float32)
        write(handles[0], x)
        proto.client.infer("mlp", [mlp_in(proto, "budget_in", 4)], outputs=[mlp_out(proto, "budget_out", 4)])
        np.testing.assert_allclose(read(handles[1], np.float32, [4, 4]), mlp_numpy(reference["mlp"], x), **TOL)
        proto.client.unregister_system_shared_memory()
        proto.client.close()
    finally:
        s.stop()
        for handle in handles:
            shm.destroy_shared_memory_region(handle)
