"""Two EEG models from the PyPI package `brainmaze-eeg-models` (ONNX, as shipped) as autoquant experiments:

- the sleep-spindle detector (OpenSpindleNet, scalp EEG): 30 s windows at 250 Hz, two inputs (the z-scored
  signal and its 15-band scalogram, computed by the package's own `scalogram`); scored on its per-sample
  segmentation output;
- the seizure detector (CNN + bidirectional LSTM, model A): 300 s of iEEG at 500 Hz as the package's own
  `preprocess_input` spectrograms; its output is time-major ([time, batch, 4]: eval.output_batch_axis 1).

No EEG recordings are available here, so the windows are synthetic, built to look like what the models were
trained on: 1/f background activity, with sleep spindles (11-16 Hz bursts of 0.5-2 s) in half of the spindle
windows and rhythmic spike-and-wave discharges in a third of the seizure windows. Seeded: the same windows in
every process. Needs `pip install brainmaze-eeg-models` (in `.[bench]`).
"""

from __future__ import annotations

import numpy as np


def _background(rng: np.random.Generator, n: int, fs: float) -> np.ndarray:
    """1/f (pink) noise, as EEG background activity."""
    spectrum = rng.normal(size=n // 2 + 1) + 1j * rng.normal(size=n // 2 + 1)
    freqs = np.fft.rfftfreq(n, 1 / fs)
    spectrum /= np.maximum(freqs, 0.5)
    return np.fft.irfft(spectrum, n)


def spindle_windows(count: int = 240, batch: int = 16):
    from brainmaze_eeg_models.spindles import FS, WINDOW, scalogram

    rng = np.random.default_rng(0)
    t = np.arange(WINDOW) / FS
    rows = []
    for i in range(count):
        x = _background(rng, WINDOW, FS)
        x /= x.std()
        for _ in range(int(rng.integers(2, 6)) if i % 2 else 0):
            centre, length, freq = rng.uniform(2, 28), rng.uniform(0.5, 2.0), rng.uniform(11, 16)
            envelope = np.exp(-0.5 * ((t - centre) / (length / 4)) ** 2)
            x += rng.uniform(1.0, 2.5) * envelope * np.sin(2 * np.pi * freq * t)
        rows.append(x)
        if len(rows) == batch or i == count - 1:
            w = np.stack(rows)
            z = (w - w.mean(-1, keepdims=True)) / w.std(-1, keepdims=True)
            spec = scalogram(w - w.mean(-1, keepdims=True))
            spec = (spec - spec.mean(-1, keepdims=True)) / spec.std(-1, keepdims=True)
            yield {"raw_signal": z[:, None, :].astype(np.float32), "spectrogram": spec.astype(np.float32)}
            rows = []


def seizure_windows(count: int = 120, batch: int = 8, fs: int = 500, seconds: int = 300):
    from brainmaze_eeg_models.seizure import preprocess_input

    rng = np.random.default_rng(1)
    n = fs * seconds
    t = np.arange(n) / fs
    rows = []
    for i in range(count):
        x = _background(rng, n, fs)
        x /= x.std()
        if i % 3 == 0:  # one seizure: rhythmic spike-and-wave, its frequency slowing down
            start, length = rng.uniform(20, 200), rng.uniform(30, 80)
            inside = (t > start) & (t < start + length)
            freq = np.interp(t, [start, start + length], [rng.uniform(4, 7), rng.uniform(1.5, 3)])
            phase = 2 * np.pi * np.cumsum(freq) / fs
            x += inside * rng.uniform(3, 6) * (np.sin(phase) ** 15 - 0.3 * np.sin(phase))
        rows.append(x)
        if len(rows) == batch or i == count - 1:
            yield {"x": preprocess_input(np.stack(rows), fs).astype(np.float32)}
            rows = []
