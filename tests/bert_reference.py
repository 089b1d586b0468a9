"""An independent reference for BERT sentence embeddings: the WordPiece tokenizer from `vocab.txt` and the
BERT forward pass written in numpy from the safetensors weights (parsed by hand), with sentence-transformers'
mean pooling and L2 normalisation. Nothing here shares code with the server's tokenizer or candle."""
import json
import math
import os
import struct
import unicodedata

import numpy as np


def load_safetensors(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    dtypes = {"F32": np.float32, "F16": np.float16, "I64": np.int64}
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        start, end = meta["data_offsets"]
        out[name] = np.frombuffer(data[start:end], dtype=dtypes[meta["dtype"]]).reshape(meta["shape"]).astype(np.float32)
    return out


def save_safetensors(path, tensors):
    """Writes FP32 arrays in the safetensors format (8-byte header length, JSON header, data)."""
    header, chunks, offset = {}, [], 0
    for name, array in tensors.items():
        data = np.ascontiguousarray(array, dtype=np.float32).tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)) + encoded + b"".join(chunks))


class WordPiece:
    """BERT's uncased basic tokenizer + greedy longest-match WordPiece."""

    def __init__(self, vocab_path, max_length):
        with open(vocab_path, encoding="utf-8") as f:
            self.vocab = {line.rstrip("\n"): i for i, line in enumerate(f)}
        self.max_length = max_length

    def basic(self, text):
        text = unicodedata.normalize("NFD", text.lower())
        text = "".join(c for c in text if unicodedata.category(c) != "Mn")
        words, word = [], ""
        for c in text:
            if c.isspace():
                if word:
                    words.append(word)
                word = ""
            elif unicodedata.category(c).startswith("P") or (33 <= ord(c) <= 47 or 58 <= ord(c) <= 64
                                                              or 91 <= ord(c) <= 96 or 123 <= ord(c) <= 126):
                if word:
                    words.append(word)
                words.append(c)
                word = ""
            else:
                word += c
        if word:
            words.append(word)
        return words

    def wordpiece(self, word):
        pieces, start = [], 0
        while start < len(word):
            end, found = len(word), None
            while start < end:
                piece = ("##" if start else "") + word[start:end]
                if piece in self.vocab:
                    found = piece
                    break
                end -= 1
            if found is None:
                return ["[UNK]"]
            pieces.append(found)
            start = end
        return pieces

    def encode(self, text):
        tokens = [p for w in self.basic(text) for p in self.wordpiece(w)][: self.max_length - 2]
        return [self.vocab["[CLS]"]] + [self.vocab[t] for t in tokens] + [self.vocab["[SEP]"]]


def layer_norm(x, w, b, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def gelu(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


class BertEncoder:
    def __init__(self, model_dir):
        self.w = load_safetensors(os.path.join(model_dir, "model.safetensors"))
        with open(os.path.join(model_dir, "config.json")) as f:
            self.config = json.load(f)
        max_length = self.config["max_position_embeddings"]
        st = os.path.join(model_dir, "sentence_bert_config.json")
        if os.path.exists(st):
            max_length = min(max_length, json.load(open(st)).get("max_seq_length", max_length))
        self.tokenizer = WordPiece(os.path.join(model_dir, "vocab.txt"), max_length)
        if not any(k.startswith("embeddings.") for k in self.w):
            self.w = {k.split("bert.", 1)[-1]: v for k, v in self.w.items()}

    def embed_ids(self, ids):
        pooled = self.states(ids).mean(0)
        return pooled / np.linalg.norm(pooled)

    def classify_ids(self, ids, head):
        """BertForSequenceClassification's logits: the [CLS] state through the pooler (dense + tanh) and the
        classifier, with `head` holding `pooler.dense.{weight,bias}` and `classifier.{weight,bias}`."""
        cls = self.states(ids)[0]
        pooled = np.tanh(cls @ head["pooler.dense.weight"].T + head["pooler.dense.bias"])
        return pooled @ head["classifier.weight"].T + head["classifier.bias"]

    def states(self, ids):
        """The encoder's last hidden states, [len(ids), hidden]."""
        c, w = self.config, self.w
        eps = c["layer_norm_eps"]
        n = len(ids)
        x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
        heads = c["num_attention_heads"]
        d = c["hidden_size"] // heads
        for i in range(c["num_hidden_layers"]):
            p = f"encoder.layer.{i}."
            lin = lambda t, name: t @ w[p + name + ".weight"].T + w[p + name + ".bias"]  # noqa: E731
            q = lin(x, "attention.self.query").reshape(n, heads, d).transpose(1, 0, 2)
            k = lin(x, "attention.self.key").reshape(n, heads, d).transpose(1, 0, 2)
            v = lin(x, "attention.self.value").reshape(n, heads, d).transpose(1, 0, 2)
            scores = q @ k.transpose(0, 2, 1) / math.sqrt(d)
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            ctx = (scores @ v).transpose(1, 0, 2).reshape(n, heads * d)
            x = layer_norm(lin(ctx, "attention.output.dense") + x, w[p + "attention.output.LayerNorm.weight"],
                           w[p + "attention.output.LayerNorm.bias"], eps)
            h = gelu(lin(x, "intermediate.dense"))
            x = layer_norm(lin(h, "output.dense") + x, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"],
                           eps)
        return x

    def embed(self, text):
        return self.embed_ids(self.tokenizer.encode(text))
