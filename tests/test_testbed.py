"""The CI-sized version of the real-size test bed's path (benchmarks/real/efficientnet_lite.py, the
EfficientNet-Lite1 study of benchmarks/search_at_scale.py): a PyTorch factory with depthwise-separable
blocks, CIFAR-10 test images from ../shared/data upscaled by the same loader, scored by agreement with
FP32, searched with early stopping (the eval set is large enough to be screened)."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import optuna
from conftest import REPO, write_experiment
from test_sources import cli

from autoquant import Workspace, load_experiment

NET = textwrap.dedent('''
    import sys

    import torch
    from torch import nn

    sys.path.insert(0, {real!r})
    from efficientnet_lite import cifar_images


    def block(cin, cout, stride):
        """MBConv-like: depthwise 3x3 + pointwise 1x1, batch norm, ReLU6, as EfficientNet-Lite."""
        return nn.Sequential(nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU6(),
                             nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU6())


    def net():
        """Random weights, batch-norm statistics from 200 of the images (as training leaves them): its
        predictions spread over the classes, so agreement with FP32 means something."""
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU6(), block(16, 24, 2),
                              block(24, 32, 2), block(32, 48, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                              nn.BatchNorm1d(48), nn.Linear(48, 10))
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.momentum = None
        with torch.no_grad():
            model.train()(torch.from_numpy(next(cifar_images(count=200, size=64, batch=200))))
        return model.eval()
''')


def test_small_testbed_path_searches_upscaled_cifar_by_agreement(shared_data, tmp_path, capsys):
    (tmp_path / "net.py").write_text(NET.format(real=str(REPO / "benchmarks" / "real")))
    exp = write_experiment(
        tmp_path / "testbed.yaml", name="testbed_small",
        model={"torch": "net.py:net", "inputs": {"input": {"shape": [1, 3, 64, 64]}}},
        data={"source": "python", "loader": str(REPO / "benchmarks" / "real" / "efficientnet_lite.py") + ":cifar_64",
              "calibration_size": 64, "eval_size": 400},
        eval={"metric": "agreement", "latency_repeats": 2},
        search={"trials": 12, "max_accuracy_drop": 6.0, "sensitivity_k": [1]},
    )  # fmt: skip
    ws = Workspace(load_experiment(exp))
    assert len(ws.graph.layers) == 8 and sum(la.depthwise for la in ws.graph.layers) == 3
    assert len(np.unique(ws.reference.outputs.argmax(axis=1))) == 10  # FP32 predicts every class: agreement informs
    code, out, err = cli(capsys, "search", exp, "--out", tmp_path / "run", "--json")
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["fp32_accuracy"] == 100.0 and result["chosen"]["accuracy_drop"] <= 6.0
    study = optuna.load_study(study_name="testbed_small", storage=f"sqlite:///{tmp_path / 'run' / 'study.db'}")
    assert sum(t.state.is_finished() for t in study.trials) >= 12
    # per-tensor weights on the depthwise convs are far off (about 16 points on the prefix): stopped early
    assert any(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
