#!/usr/bin/env python3
"""Generates the TorchScript example models (models/torch/) from the same weights as the ONNX ones.

Needs the full PyPI torch (only for generating; the server links the wheel's libtorch without Python):
    python3 -m venv .venv-fixtures && .venv-fixtures/bin/pip install torch==2.13.0 numpy
    .venv-fixtures/bin/python models/generate_torch.py
Writes `models/torch/<model>/{config.pbtxt,1/model.pt}` and updates their lines in `models/SHA256SUMS`.
Expected outputs are never computed here: the tests recompute them with numpy from models/reference/.
- mlp_torch:    the `mlp` example's weights (models/reference/mlp.npz) as a TorchScript module, INPUT__0 FP32
                [-1,16] -> OUTPUT__0 FP32 [-1,4], batched with dynamic batching like the ONNX one;
- dtypes_torch: one input per datatype the runtime supports, each returned transformed (x*2+1 for numbers,
                logical not for BOOL), so every element type travels both ways.
"""
import hashlib
import os

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "torch")

DTYPES = [  # (name suffix, Triton config type, torch dtype)
    ("FP32", "TYPE_FP32", torch.float32), ("FP64", "TYPE_FP64", torch.float64), ("FP16", "TYPE_FP16", torch.float16),
    ("BF16", "TYPE_BF16", torch.bfloat16), ("INT8", "TYPE_INT8", torch.int8), ("INT16", "TYPE_INT16", torch.int16),
    ("INT32", "TYPE_INT32", torch.int32), ("INT64", "TYPE_INT64", torch.int64), ("UINT8", "TYPE_UINT8", torch.uint8),
    ("BOOL", "TYPE_BOOL", torch.bool),
]


class Mlp(torch.nn.Module):
    def __init__(self, ref):
        super().__init__()
        for k in ("w1", "b1", "w2", "b2"):
            self.register_buffer(k, torch.from_numpy(np.ascontiguousarray(ref[k])))

    def forward(self, x):
        return torch.relu(x @ self.w1 + self.b1) @ self.w2 + self.b2


class Dtypes(torch.nn.Module):
    def forward(self, f32, f64, f16, bf16, i8, i16, i32, i64, u8, b):
        return (f32 * 2 + 1, f64 * 2 + 1, f16 * 2 + 1, bf16 * 2 + 1, i8 * 2 + 1, i16 * 2 + 1, i32 * 2 + 1,
                i64 * 2 + 1, u8 * 2 + 1, torch.logical_not(b))


def save(name, module, config):
    d = os.path.join(OUT, name, "1")
    os.makedirs(d, exist_ok=True)
    torch.jit.script(module).save(os.path.join(d, "model.pt"))
    with open(os.path.join(OUT, name, "config.pbtxt"), "w") as f:
        f.write(config)


def main():
    ref = np.load(os.path.join(HERE, "reference", "mlp.npz"))
    save("mlp_torch", Mlp(ref).eval(),
         'platform: "pytorch_libtorch"\nmax_batch_size: 64\n'
         'input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 16 ] } ]\n'
         'output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
         'dynamic_batching { max_queue_delay_microseconds: 100 }\n')
    inputs = ",\n".join(f'  {{ name: "IN_{n}" data_type: {t} dims: [ 3 ] }}' for n, t, _ in DTYPES)
    outputs = ",\n".join(f'  {{ name: "OUT_{n}" data_type: {t} dims: [ 3 ] }}' for n, t, _ in DTYPES)
    save("dtypes_torch", Dtypes().eval(),
         f'backend: "pytorch"\nmax_batch_size: 8\ninput [\n{inputs}\n]\noutput [\n{outputs}\n]\n')
    sums = os.path.join(HERE, "SHA256SUMS")
    lines = [l for l in open(sums).read().splitlines() if not l.split("  ", 1)[-1].startswith("torch/")]
    for dirpath, _, files in sorted(os.walk(OUT)):
        for f in sorted(files):
            path = os.path.join(dirpath, f)
            digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
            lines.append(f"{digest}  {os.path.relpath(path, HERE)}")
    with open(sums, "w") as f:
        f.write("\n".join(sorted(lines, key=lambda l: l.split("  ", 1)[1])) + "\n")


if __name__ == "__main__":
    main()
