import pytest
from conftest import write_experiment

from autoquant import ConfigError, load_experiment


def test_relative_paths_resolve_against_the_yaml_file(tmp_path):
    sub = tmp_path / "exp"
    sub.mkdir()
    path = write_experiment(sub / "e.yaml", name="x", model={"onnx": "../m.onnx"},
                            data={"source": "npz", "path": "d.npz"})
    exp = load_experiment(path)
    assert exp.model.onnx == tmp_path / "m.onnx"
    assert exp.data.path == sub / "d.npz"


@pytest.mark.parametrize(
    "sections, message",
    [
        ({"name": "x", "model": {"builtin": "digits_cnn"}, "epochs": 3}, r"unknown key\(s\) epochs"),
        ({"name": "x", "model": {"builtin": "digits_cnn"}, "data": {"calib_size": 3}}, "unknown key"),
        ({"name": "x", "model": {"builtin": "digits_cnn"}, "data": {"eval_size": "many"}}, "must be int"),
        ({"name": "x", "model": {"builtin": "resnet9000"}}, "model.builtin 'resnet9000' is unknown"),
        ({"name": "x", "model": {}}, "exactly one of"),
        ({"name": "x", "model": {"builtin": "digits_cnn"}, "quantization": {"activation_type": "int4"}}, "activation_type"),
        ({"model": {"builtin": "digits_cnn"}}, "name"),
        ({"name": "x", "model": {"builtin": "digits_cnn"}, "search": {"early_stop": "yes"}}, "early_stop must be bool"),
        ({"name": "x", "model": {"builtin": "digits_cnn"}, "quantization": {"smoothquant_alpha": 2}}, "smoothquant_alpha"),
    ],
)
def test_bad_experiment_files_name_the_problem(tmp_path, sections, message):
    with pytest.raises(ConfigError, match=message):
        load_experiment(write_experiment(tmp_path / "e.yaml", **sections))


def test_missing_and_malformed_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_experiment(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not a YAML text file"):
        load_experiment(bad)
