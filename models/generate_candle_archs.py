#!/usr/bin/env python3
"""Generates tiny random-weight sentence encoders of the architectures the candle runtime runs besides BERT,
with their expected embeddings computed by Hugging Face transformers in PyTorch (models/candle_archs/).

Needs transformers and the full PyPI torch, only for generating (the tests read the stored references):
    python3 -m venv /tmp/fixture-venv && /tmp/fixture-venv/bin/pip install torch==2.13.0 transformers safetensors
    /tmp/fixture-venv/bin/python models/generate_candle_archs.py
Writes `models/candle_archs/repository/<model>/1/` (sentence-transformers layout: model.safetensors,
config.json, tokenizer.json, modules.json, 1_Pooling/config.json, sentence_bert_config.json; no config.pbtxt,
as the server detects the platform) and `models/candle_archs/reference/<model>.{npz,json}`, and updates their
lines in `models/SHA256SUMS`. Each model: hidden 32, 2 layers, 2 heads, a vocabulary of a few hundred tokens
made here with the `tokenizers` library, seeded weights (std 0.2, LayerNorm scales and biases perturbed, so
every part of the network moves the output), under 150 kB.
- distilbert:  DistilBertModel, WordPiece (BERT-style, lowercased) tokenizer, mean pooling, then Normalize;
- roberta:     RobertaModel, byte-level BPE tokenizer without padding settings (the server pads with the
               config's pad_token_id 1), CLS pooling, no normalisation;
- xlm_roberta: XLMRobertaModel, Unigram (SentencePiece-style) tokenizer that pads itself, mean pooling,
               max_seq_length 16, so the long text is truncated.
Reference: each text alone through the model (`last_hidden_state`), pooled in numpy with the attention
mask, normalised where the model says so. The npz also holds the batch as padded token ids and mask.
"""
import hashlib
import json
import os
import shutil

import numpy as np
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "candle_archs")
REPO = os.path.join(OUT, "repository")
REF = os.path.join(OUT, "reference")

TEXTS = [
    "hello world",
    "A man is eating food.",
    "The quick brown fox jumps over the lazy dog!",
    "Grüße aus Köln, ça va? 東京 🙂",
    "",
    "ferroserve serves tiny random encoders, batched and padded: this sentence is much longer than the others, "
    "so that it is cut at the model's maximum length while the short ones are padded up to it.",
]
CORPUS = [
    "hello world, the world says hello back to the people of the world.",
    "a man is eating food and a woman is eating bread; the quick brown fox jumps over the lazy dog.",
    "ferroserve serves models: encoders, tokenizers and embeddings, batched and padded for the server.",
    "this sentence is longer than the others, so it is cut at the maximum length of the model.",
    "grüße aus köln und münchen, ça va bien? les élèves étudient à l'école.",
    "numbers 0 1 2 3 4 5 6 7 8 9 and punctuation . , ; : ! ? ' \" - ( ) [ ] / & % $ # @",
]
HIDDEN, LAYERS, HEADS, INTERMEDIATE = 32, 2, 2, 64


def wordpiece_tokenizer():
    """A BERT-style uncased WordPiece tokenizer: special tokens, every character (alone and as `##` piece)
    and the whole words of the corpus."""
    normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                            lowercase=True)
    pre = pre_tokenizers.BertPreTokenizer()
    words, chars = set(), set()
    for line in CORPUS:
        for word, _ in pre.pre_tokenize_str(normalizer.normalize_str(line)):
            words.add(word)
            chars.update(word)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += sorted(chars) + ["##" + c for c in sorted(chars)] + sorted(w for w in words if len(w) > 1)
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.decoder = decoders.WordPiece()
    return tok, 0


def byte_bpe_tokenizer():
    """A RoBERTa-style byte-level BPE tokenizer trained on the corpus: <s>=0, <pad>=1, </s>=2, <unk>=3."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), add_prefix_space=False)
    return tok, 1


def unigram_tokenizer():
    """An XLM-RoBERTa-style Unigram tokenizer (SentencePiece's `▁` word marks) with its own padding settings:
    <s>=0, <pad>=1, </s>=2, <unk>=3, then the corpus's words (as `▁word`), a few suffixes and its characters,
    scored so that whole words beat suffixes beat characters. (Written out rather than trained: the Unigram
    trainer's output varies from run to run.)"""
    normalizer = normalizers.NFKC()
    pre = pre_tokenizers.Metaspace()
    words, chars = set(), set()
    for line in CORPUS:
        for word, _ in pre.pre_tokenize_str(normalizer.normalize_str(line)):
            words.add(word)
            chars.update(word)
    pieces = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [(w, -3.0) for w in sorted(words) if len(w) > 2]
    pieces += [(s, -4.0) for s in ("ing", "ed", "er", "es", "s", "▁the", "▁a")]
    pieces += [(c, -6.0) for c in sorted(chars)]
    seen = set()
    pieces = [p for p in pieces if not (p[0] in seen or seen.add(p[0]))]
    tok = Tokenizer(models.Unigram(pieces, unk_id=3, byte_fallback=False))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    tok.enable_padding(pad_id=1, pad_token="<pad>")
    return tok, 1


def randomize(model, seed):
    """Weights large enough that attention, every layer and LayerNorm's own parameters change the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=gen)
            if "layernorm" in name.lower().replace("_", "") and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(0.2 * noise)


def embed_alone(model, tok, text, max_length, pooling, normalize):
    tok = Tokenizer.from_str(tok.to_str())
    tok.no_padding()
    tok.enable_truncation(max_length)
    e = tok.encode(text)
    ids = torch.tensor([e.ids], dtype=torch.long)
    mask = torch.tensor([e.attention_mask], dtype=torch.long)
    with torch.no_grad():
        states = model(input_ids=ids, attention_mask=mask).last_hidden_state[0].numpy().astype(np.float64)
    m = np.array(e.attention_mask, dtype=np.float64)[:, None]
    pooled = states[0] if pooling == "cls" else (states * m).sum(0) / max(m.sum(), 1e-9)
    if normalize:
        pooled = pooled / max(np.linalg.norm(pooled), 1e-12)
    return pooled.astype(np.float32), e.ids


def build(name, model_type, seed, tokenizer, pooling, normalize, max_seq_length):
    tok, pad_id = tokenizer()
    vocab = tok.get_vocab_size()
    torch.manual_seed(seed)
    if model_type == "distilbert":
        config = transformers.DistilBertConfig(vocab_size=vocab, dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS,
                                               hidden_dim=INTERMEDIATE, max_position_embeddings=64,
                                               pad_token_id=pad_id)
        config._attn_implementation = "eager"
        model = transformers.DistilBertModel(config)
        max_positions = 64
    else:
        cls = transformers.RobertaConfig if model_type == "roberta" else transformers.XLMRobertaConfig
        config = cls(vocab_size=vocab, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                     intermediate_size=INTERMEDIATE, max_position_embeddings=64 + pad_id + 1, type_vocab_size=1,
                     pad_token_id=pad_id, bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5)
        config._attn_implementation = "eager"
        model = (transformers.RobertaModel if model_type == "roberta" else transformers.XLMRobertaModel)(config)
        max_positions = 64
    randomize(model, seed)
    model.eval()

    d = os.path.join(REPO, name, "1")
    shutil.rmtree(os.path.join(REPO, name), ignore_errors=True)
    os.makedirs(os.path.join(d, "1_Pooling"))
    model.save_pretrained(d, safe_serialization=True)
    for extra in ("generation_config.json",):
        if os.path.exists(os.path.join(d, extra)):
            os.remove(os.path.join(d, extra))
    tok.save(os.path.join(d, "tokenizer.json"))
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    write_json(os.path.join(d, "modules.json"), modules)
    write_json(os.path.join(d, "1_Pooling", "config.json"), {
        "word_embedding_dimension": HIDDEN, "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False})
    write_json(os.path.join(d, "sentence_bert_config.json"), {"max_seq_length": max_seq_length, "do_lower_case": False})

    max_length = min(max_seq_length, max_positions)
    alone = [embed_alone(model, tok, t, max_length, pooling, normalize) for t in TEXTS]
    embeddings = np.stack([e for e, _ in alone])
    length = max(len(ids) for _, ids in alone)
    input_ids = np.array([ids + [pad_id] * (length - len(ids)) for _, ids in alone], dtype=np.int64)
    attention_mask = np.array([[1] * len(ids) + [0] * (length - len(ids)) for _, ids in alone], dtype=np.int64)
    # The same rows padded into one batch give the same vectors (what the server's batching relies on).
    with torch.no_grad():
        states = model(input_ids=torch.from_numpy(input_ids),
                       attention_mask=torch.from_numpy(attention_mask)).last_hidden_state.numpy()
    m = attention_mask[:, :, None].astype(np.float64)
    pooled = states[:, 0] if pooling == "cls" else (states * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    if normalize:
        pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    assert np.max(np.abs(pooled - embeddings)) < 1e-5, np.max(np.abs(pooled - embeddings))
    if name == "xlm_roberta":
        assert len(alone[5][1]) == max_length, "the long text is truncated"

    os.makedirs(REF, exist_ok=True)
    np.savez(os.path.join(REF, f"{name}.npz"), texts=np.array(TEXTS),
             embeddings=embeddings, input_ids=input_ids, attention_mask=attention_mask)
    write_json(os.path.join(REF, f"{name}.json"), {
        "model_type": model_type, "pooling": pooling, "normalize": normalize, "max_length": max_length,
        "texts": TEXTS, "embeddings": [[float(v) for v in row] for row in embeddings],
        "input_ids": input_ids.tolist(), "attention_mask": attention_mask.tolist()})
    size = sum(os.path.getsize(os.path.join(p, f)) for p, _, fs in os.walk(d) for f in fs)
    print(f"{name}: vocab {vocab}, {size} bytes, {length} tokens in the longest row")
    assert size < 1_000_000


def write_json(path, value):
    with open(path, "w") as f:
        json.dump(value, f, indent=2, ensure_ascii=False)
        f.write("\n")


def write_checksums():
    sums = os.path.join(HERE, "SHA256SUMS")
    ours = os.path.relpath(OUT, HERE) + "/"
    lines = [l for l in open(sums).read().splitlines() if l.strip() and not l.split("  ", 1)[1].startswith(ours)]
    for dirpath, _, files in sorted(os.walk(OUT)):
        for f in sorted(files):
            path = os.path.join(dirpath, f)
            digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
            lines.append(f"{digest}  {os.path.relpath(path, HERE)}")
    with open(sums, "w") as f:
        f.write("\n".join(sorted(lines, key=lambda l: l.split("  ", 1)[1])) + "\n")


def main():
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    build("distilbert", "distilbert", 1, wordpiece_tokenizer, "mean", True, 64)
    build("roberta", "roberta", 2, byte_bpe_tokenizer, "cls", False, 64)
    build("xlm_roberta", "xlm-roberta", 3, unigram_tokenizer, "mean", False, 16)
    write_checksums()


if __name__ == "__main__":
    main()
