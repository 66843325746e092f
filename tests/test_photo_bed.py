"""The CI-sized version of the photo bed (benchmarks/beds.py: EfficientNet-Lite on ../shared/data/imagenet_photos):
a depthwise-separable PyTorch factory, natural photos through the `folder` source at a small size, scored by
top-1 agreement with FP32 — and a limit derived from what all-INT8 loses on this machine, so the search has
work to do on any CPU: all-INT8 fails it by construction."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import yaml
from conftest import write_experiment
from test_sources import cli

from autoquant import LayerChoice, QuantPlan, Workspace, load_experiment
from autoquant.measure import Meter

NET = textwrap.dedent('''
    from pathlib import Path

    import numpy as np
    import torch
    from PIL import Image
    from torch import nn

    PHOTOS = Path({photos!r})


    def block(cin, cout, stride):
        """MBConv-like: depthwise 3x3 + pointwise 1x1, batch norm, ReLU6, as EfficientNet-Lite."""
        return nn.Sequential(nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU6(),
                             nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU6())


    def photos(count):
        out = []
        for f in sorted(PHOTOS.glob("*.jpg"))[:: 1000 // count][:count]:
            with Image.open(f) as im:
                out.append(np.asarray(im.convert("RGB").resize((64, 64)), np.float32).transpose(2, 0, 1) / 127.5 - 1)
        return torch.from_numpy(np.stack(out))


    def net():
        """Random weights, batch-norm statistics from 200 of the photos (as training leaves them): its
        predictions spread over the classes, so agreement with FP32 means something."""
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU6(), block(16, 24, 2),
                              block(24, 32, 2), block(32, 48, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                              nn.BatchNorm1d(48), nn.Linear(48, 10))
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.momentum = None
        with torch.no_grad():
            model.train()(photos(200))
        return model.eval()
''')


def test_small_photo_bed_needs_a_search_and_gets_one(shared_data, tmp_path, capsys):
    (tmp_path / "net.py").write_text(NET.format(photos=str(shared_data / "imagenet_photos")))
    sections = {
        "name": "photo_bed_small",
        "model": {"torch": "net.py:net", "inputs": {"input": {"shape": [1, 3, 64, 64]}}},
        "data": {"source": "folder", "path": str(shared_data / "imagenet_photos"), "calibration_size": 32, "eval_size": 96,
              "image": {"size": 64, "resize": 72, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}},
        "eval": {"metric": "agreement", "latency_repeats": 2},
        # at 64 px the quantized network runs slower than FP32 on some CPUs: under bitops that does not veto it
        "search": {"trials": 10, "sensitivity_k": [1], "objective": "bitops"},
    }
    ws = Workspace(load_experiment(write_experiment(tmp_path / "probe.yaml", **sections)))
    assert len(ws.graph.layers) == 8 and sum(la.depthwise for la in ws.graph.layers) == 3
    assert len(np.unique(ws.reference.outputs.argmax(axis=1))) >= 5  # FP32 decisions spread: agreement informs
    all_int8 = QuantPlan.uniform(ws.graph.names, LayerChoice.of())
    drop = Meter(ws)(ws.build(all_int8), all_int8).accuracy_drop
    # One photo is 100/96 points; the bed is only a test of the search if all-INT8 loses some here.
    assert drop > 0, "all-INT8 agrees with FP32 on every photo: this bed needs no search on this machine"
    limit = round(drop / 2, 3)
    sections["search"]["max_accuracy_drop"] = limit
    exp = write_experiment(tmp_path / "bed.yaml", **sections)

    code, out, err = cli(capsys, "search", exp, "--out", tmp_path / "run", "--json")
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["fp32_accuracy"] == 100.0 and result["chosen"]["accuracy_drop"] <= limit
    # within 10 trials: the ladder (all-INT8, then the error model's plans priced in latency) or the error model's
    # warm starts found the first one
    import optuna

    study = optuna.load_study(study_name="photo_bed_small", storage=f"sqlite:///{tmp_path / 'run' / 'study.db'}")
    first = next(t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE
                 and t.user_attrs["result"]["accuracy_drop"] <= limit and t.user_attrs.get("label") != "all-float")
    # The ladder's rungs after the first are priced by the latency table measured on this machine (noisy on a model
    # this small): which plan a rung tries varies from run to run, and a rung may miss where the error model's next
    # warm start meets the limit. Either way the plan came from the error model, not from a random draw.
    assert first.user_attrs["label"].startswith(("ladder-", "guided-")), first.user_attrs
    record = json.loads((tmp_path / "run" / "best" / "record.json").read_text())
    assert any(not layer["quantized"] for layer in record["layers"])  # all-INT8 cannot meet it
    # the export is the model the trial measured: `evaluate` scores the same agreement
    code, out, err = cli(capsys, "evaluate", tmp_path / "run" / "best" / "model.int8.onnx", exp, "--json")
    assert code == 0, err
    assert json.loads(out)["accuracy"] == result["chosen"]["accuracy"]
    # and onnxruntime runs each layer as the record says
    code, out, err = cli(capsys, "inspect", tmp_path / "run" / "best" / "model.int8.onnx", "--record",
                         tmp_path / "run" / "best" / "record.json")
    assert code == 0, err
    assert yaml.safe_load(exp.read_text())["search"]["max_accuracy_drop"] == limit
