"""Writes a length-prefixed gRPC ModelInferRequest (raw contents, batch-1 MLP) for h2load's -d flag."""
import struct
import sys

import numpy as np
from tritonclient.grpc import service_pb2

request = service_pb2.ModelInferRequest(model_name="mlp")
request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 16])
request.raw_input_contents.append(np.linspace(0, 1, 16, dtype=np.float32).tobytes())
message = request.SerializeToString()
with open(sys.argv[1], "wb") as f:
    f.write(struct.pack(">BI", 0, len(message)) + message)
