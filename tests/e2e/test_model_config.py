"""Model configuration round trip: every Triton ModelConfig field a config.pbtxt sets comes back, with the value
written, from HTTP `/v2/models/{m}/config` (Triton's JSON) and from gRPC `ModelConfig` (protobuf), the same in
both, including the fields ferroserve does not act on; those are named in one warning when the model loads.
The source of truth is the ModelConfig descriptor tritonclient decodes with (Triton's model_config.proto): one
model's config sets every field of it, generated here, so a field, number or type ferroserve gets wrong fails."""
import os
import re
import shutil
import tempfile

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import json_format, text_format
from google.protobuf.descriptor import FieldDescriptor
from tritonclient.grpc import model_config_pb2

from fixtures import mlp_numpy
from server import REPOSITORY, Server

# ferroserve refuses a config that sets these (it has no sequence batcher and runs no ensembles).
REFUSED = {"sequence_batching", "ensemble_scheduling"}
WARNING = "config.pbtxt fields ferroserve reads but does not act on"

# The brief's wide set, written as a Triton user would (models/repository/mlp's model underneath).
WIDE = """
name: "wide"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [ 16 ] optional: true
          allow_ragged_batch: true } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
instance_group [ { name: "mlp_cpu" count: 1 kind: KIND_CPU host_policy: "numa0" } ]
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 100
  preserve_ordering: true
  priority_levels: 2
  default_priority_level: 2
  default_queue_policy { timeout_action: DELAY default_timeout_microseconds: 5000000
                         allow_timeout_override: true max_queue_size: 64 }
  priority_queue_policy { key: 1 value: { max_queue_size: 8 } }
}
optimization {
  graph { level: 1 }
  execution_accelerators {
    cpu_execution_accelerator [ { name: "openvino" parameters { key: "num_threads" value: "2" } } ]
  }
  input_pinned_memory { enable: false }
}
model_warmup [ {
  name: "zeros"
  batch_size: 2
  inputs { key: "INPUT0" value: { data_type: TYPE_FP32 dims: [ 16 ] zero_data: true } }
} ]
response_cache { enable: true }
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
model_transaction_policy { decoupled: false }
cc_model_filenames { key: "sm_86" value: "model_sm86.onnx" }
metric_tags [ { key: "team" value: "search" }, { key: "tier" value: "gold" } ]
batch_input [ { kind: BATCH_ELEMENT_COUNT target_name: "COUNT" data_type: TYPE_INT32 source_input: "INPUT0" } ]
"""

# What ferroserve does not act on in WIDE, in file order, as the load warning names it.
WIDE_NOT_ACTED_ON = [
    "input.format", "input.optional", "input.allow_ragged_batch",
    "instance_group.name", "instance_group.host_policy",
    "dynamic_batching.preserve_ordering", "dynamic_batching.default_queue_policy.timeout_action",
    "dynamic_batching.priority_queue_policy",
    "optimization.graph.level", "optimization.execution_accelerators.cpu_execution_accelerator",
    "optimization.input_pinned_memory.enable", "model_warmup", "response_cache.enable",
    "cc_model_filenames", "metric_tags", "batch_input",
]


def is_map(field):
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def sample(field):
    """A value other than the default for a scalar field: negative for signed, past 2^31 or 2^63 for
    unsigned, so that a wrong type or varint encoding shows."""
    t = field.type
    if t == FieldDescriptor.TYPE_BOOL:
        return True
    if t == FieldDescriptor.TYPE_INT32:
        return -7
    if t == FieldDescriptor.TYPE_INT64:
        return -(1 << 40)
    if t == FieldDescriptor.TYPE_UINT32:
        return (1 << 32) - 1
    if t == FieldDescriptor.TYPE_UINT64:
        return (1 << 64) - 1
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return 0.25
    if t == FieldDescriptor.TYPE_STRING:
        return f"{field.name}-text"
    if t == FieldDescriptor.TYPE_ENUM:
        return field.enum_type.values[-1].number
    raise AssertionError(f"no sample for {field.full_name}")


def fill(message):
    """Sets every field of `message`, recursively (the first member of each oneof, two entries of every
    repeated field and map), to a value other than its default."""
    oneofs = set()
    for field in message.DESCRIPTOR.fields:
        if field.name in REFUSED:
            continue
        if field.containing_oneof is not None:
            if field.containing_oneof.name in oneofs:
                continue
            oneofs.add(field.containing_oneof.name)
        if is_map(field):
            key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
            target = getattr(message, field.name)
            for i in (1, 2):
                k = f"key{i}" if key.type == FieldDescriptor.TYPE_STRING else i
                if value.message_type is not None:
                    fill(target[k])
                else:
                    target[k] = sample(value)
        elif field.is_repeated:
            target = getattr(message, field.name)
            for _ in range(2):
                if field.message_type is not None:
                    fill(target.add())
                else:
                    target.append(sample(field))
        elif field.message_type is not None:
            sub = getattr(message, field.name)
            sub.SetInParent()
            fill(sub)
        else:
            setattr(message, field.name, sample(field))


def every_field_config(name):
    """A ModelConfig setting every field of Triton's descriptor, less the refused ones; the fields ferroserve
    acts on hold what it serves for models/repository/mlp (so it loads and answers, and completion changes
    nothing); the rest keep the generated values."""
    c = model_config_pb2.ModelConfig()
    fill(c)
    c.name, c.platform, c.backend = name, "onnxruntime_onnx", "onnxruntime"
    c.max_batch_size = 8
    c.version_policy.latest.num_versions = 1
    c.default_model_filename = "model.onnx"
    del c.input[1:], c.output[1:], c.instance_group[1:]
    for tensor, tensor_name, dims in ((c.input[0], "INPUT0", [16]), (c.output[0], "OUTPUT0", [4])):
        tensor.name, tensor.data_type = tensor_name, model_config_pb2.TYPE_FP32
        tensor.ClearField("dims")
        tensor.dims.extend(dims)
        tensor.ClearField("reshape")
    c.output[0].ClearField("label_filename")  # a label file must exist beside the config
    group = c.instance_group[0]
    group.count, group.kind = 1, model_config_pb2.ModelInstanceGroup.KIND_CPU
    group.ClearField("gpus")
    batching = c.dynamic_batching
    batching.ClearField("preferred_batch_size")
    batching.preferred_batch_size.extend([4, 8])
    batching.max_queue_delay_microseconds = 100
    batching.priority_levels, batching.default_priority_level = 2, 1
    batching.default_queue_policy.max_queue_size = 64
    batching.default_queue_policy.default_timeout_microseconds = 5_000_000
    c.model_transaction_policy.decoupled = False
    return c


def model_dir(root, name, config_text=None):
    """models/repository/mlp's model under `name`, with `config_text` as its config.pbtxt (none if None)."""
    shutil.copytree(os.path.join(REPOSITORY, "mlp"), os.path.join(root, name))
    path = os.path.join(root, name, "config.pbtxt")
    os.remove(path)
    if config_text is not None:
        with open(path, "w") as f:
            f.write(config_text)


@pytest.fixture(scope="module")
def srv():
    root = tempfile.mkdtemp(prefix="ferroserve-model-config-")
    model_dir(root, "wide", WIDE)
    model_dir(root, "every", text_format.MessageToString(every_field_config("every")))
    model_dir(root, "from_json")
    s = Server("--model-control-mode", "explicit", "--load-model", "wide,every", repository=root)
    try:
        yield s
    finally:
        assert s.stop() == 0, s.logs()
        shutil.rmtree(root)


def configs(s, model):
    """The config of `model` from HTTP (Triton's JSON), from gRPC as tritonclient's JSON, and as protobuf."""
    http = httpclient.InferenceServerClient(s.http_addr)
    grpc = grpcclient.InferenceServerClient(s.grpc_addr)
    try:
        return (http.get_model_config(model), grpc.get_model_config(model, as_json=True)["config"],
                grpc.get_model_config(model).config)
    finally:
        http.close()
        grpc.close()


def assert_same_message(expected, got, what):
    if expected != got:
        pytest.fail(f"{what} differs\nexpected: {text_format.MessageToString(expected)}\n"
                    f"got: {text_format.MessageToString(got)}")


def int64_field_names(descriptor, names=None, seen=None):
    """The names of the int64 and uint64 fields of a message type, recursively."""
    names, seen = (set() if names is None else names), (set() if seen is None else seen)
    if descriptor.full_name in seen:
        return names
    seen.add(descriptor.full_name)
    for field in descriptor.fields:
        if field.type in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64):
            names.add(field.name)
        if field.message_type is not None:
            int64_field_names(field.message_type, names, seen)
    return names


INT64_FIELDS = int64_field_names(model_config_pb2.ModelConfig.DESCRIPTOR) - {"key"}


def numbers(value, name=None):
    """tritonclient's gRPC JSON (MessageToJson) writes 64-bit integers as strings, Triton's HTTP JSON as
    numbers: the gRPC form with the 64-bit fields as numbers."""
    if isinstance(value, dict):
        return {k: numbers(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [numbers(v, name) for v in value]
    if isinstance(value, str) and name in INT64_FIELDS:
        return int(value)
    return value


def test_wide_config_comes_back_as_written_over_both_protocols(srv):
    http, grpc_json, grpc = configs(srv, "wide")
    grpc_dict = json_format.MessageToDict(grpc, preserving_proto_field_name=True)
    assert grpc_json == grpc_dict
    # Each field as written, over HTTP and over gRPC (where proto3 JSON leaves out what is at its default).
    for config in (http, numbers(grpc_dict)):
        inp = config["input"][0]
        assert (inp["format"], inp["optional"], inp["allow_ragged_batch"]) == ("FORMAT_NCHW", True, True)
        assert inp["dims"] == [16] and inp["data_type"] == "TYPE_FP32"
        assert config["optimization"]["graph"] == {"level": 1}
        accelerator = config["optimization"]["execution_accelerators"]["cpu_execution_accelerator"]
        assert accelerator == [{"name": "openvino", "parameters": {"num_threads": "2"}}]
        assert config["optimization"]["input_pinned_memory"].get("enable", False) is False
        warmup = config["model_warmup"][0]
        assert (warmup["name"], warmup["batch_size"], warmup.get("count", 0)) == ("zeros", 2, 0)
        assert warmup["inputs"] == {"INPUT0": {"data_type": "TYPE_FP32", "dims": [16], "zero_data": True}}
        assert config["response_cache"] == {"enable": True}
        group = config["instance_group"][0]
        assert (group["name"], group["host_policy"], group["count"], group["kind"]) == \
            ("mlp_cpu", "numa0", 1, "KIND_CPU")
        batching = config["dynamic_batching"]
        assert batching["preserve_ordering"] is True
        assert (batching["priority_levels"], batching["default_priority_level"]) == (2, 2)
        assert batching["preferred_batch_size"] == [4, 8]
        queue = batching["default_queue_policy"]
        assert (queue["timeout_action"], queue["default_timeout_microseconds"], queue["allow_timeout_override"],
                queue["max_queue_size"]) == ("DELAY", 5000000, True, 64)
        assert batching["priority_queue_policy"]["1"]["max_queue_size"] == 8
        assert config["parameters"] == {"intra_op_thread_count": {"string_value": "1"}}
        assert config["model_transaction_policy"].get("decoupled", False) is False
        assert config["cc_model_filenames"] == {"sm_86": "model_sm86.onnx"}
        assert config["metric_tags"] == {"team": "search", "tier": "gold"}
        batch_input = config["batch_input"][0]
        assert batch_input.get("kind", "BATCH_ELEMENT_COUNT") == "BATCH_ELEMENT_COUNT"
        assert (batch_input["target_name"], batch_input["data_type"], batch_input["source_input"]) == \
            (["COUNT"], "TYPE_INT32", ["INPUT0"])
        # What completion fills in where the file is silent.
        assert (config["backend"], config["default_model_filename"]) == ("onnxruntime", "model.onnx")
    # HTTP carries the same message as gRPC (Triton's JSON parses into it), and nothing else.
    assert_same_message(json_format.ParseDict(http, model_config_pb2.ModelConfig()), grpc, "HTTP vs gRPC")
    assert http["model_warmup"][0]["count"] == 0  # Triton's JSON prints scalar defaults


def test_every_triton_field_round_trips(srv):
    """Every field of Triton's ModelConfig descriptor (less the refused scheduling choices), written in
    config.pbtxt, comes back identical over gRPC, and over HTTP as JSON that parses into the same message."""
    expected = every_field_config("every")
    http, grpc_json, grpc = configs(srv, "every")
    assert_same_message(expected, grpc, "gRPC config")
    assert_same_message(expected, json_format.ParseDict(http, model_config_pb2.ModelConfig()), "HTTP config")
    assert grpc_json == json_format.MessageToDict(expected, preserving_proto_field_name=True)
    # Spot checks of what the generated values exercise: 64-bit, negative and enum values.
    assert http["input"][0]["format"] == "FORMAT_NCHW"
    assert http["optimization"]["graph"]["level"] == -7
    assert http["dynamic_batching"]["priority_queue_policy"]["2"]["default_timeout_microseconds"] == (1 << 64) - 1
    assert http["model_warmup"][0]["inputs"]["key1"]["dims"] == [-(1 << 40), -(1 << 40)]
    assert http["model_metrics"]["metric_control"][0]["histogram_options"]["buckets"] == [0.25, 0.25]


def test_a_load_request_json_config_round_trips(srv):
    """Triton's load request with `config` (protobuf JSON: int64 as strings, maps as objects) in place of
    config.pbtxt reports the same fields back."""
    expected = every_field_config("from_json")
    text = json_format.MessageToJson(expected, preserving_proto_field_name=True)
    http = httpclient.InferenceServerClient(srv.http_addr)
    try:
        http.load_model("from_json", config=text)
    finally:
        http.close()
    _, _, grpc = configs(srv, "from_json")
    assert_same_message(expected, grpc, "gRPC config of a JSON load")


@pytest.mark.parametrize("model", ["wide", "every"])
def test_model_still_serves(srv, reference, model):
    x = np.random.default_rng(3).standard_normal((2, 16)).astype(np.float32)
    want = mlp_numpy(reference["mlp"], x)
    for module, addr in ((httpclient, srv.http_addr), (grpcclient, srv.grpc_addr)):
        client = module.InferenceServerClient(addr)
        inp = module.InferInput("INPUT0", [2, 16], "FP32")
        inp.set_data_from_numpy(x)
        got = client.infer(model, [inp]).as_numpy("OUTPUT0")
        client.close()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def warnings(srv, model):
    return [line for line in srv.logs().splitlines() if WARNING in line and f'model="{model}"' in line]


def test_one_warning_names_the_fields_not_acted_on(srv):
    lines = warnings(srv, "wide")
    assert len(lines) == 1, srv.logs()
    fields = re.search(r'fields="([^"]*)"', lines[0]).group(1).split(", ")
    assert fields == WIDE_NOT_ACTED_ON
    # The generated config sets every field: each top-level one ferroserve ignores is named (whole or by its
    # fields), and none it acts on.
    lines = warnings(srv, "every")
    assert len(lines) == 1, srv.logs()
    named = re.search(r'fields="([^"]*)"', lines[0]).group(1).split(", ")
    for top in ["runtime", "optimization", "model_warmup", "response_cache", "batch_input", "batch_output",
                "cc_model_filenames", "metric_tags", "model_operations", "model_repository_agents",
                "model_metrics", "input.format", "instance_group.rate_limiter"]:
        assert any(n == top or n.startswith(top + ".") for n in named), (top, named)
    for acted_on in ["name", "platform", "max_batch_size", "input.dims", "parameters",
                     "dynamic_batching.preferred_batch_size", "model_transaction_policy.decoupled"]:
        assert acted_on not in named
    assert "not supported by ferroserve, ignored" not in srv.logs()
