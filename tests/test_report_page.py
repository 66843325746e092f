"""The study page (report.html) and the comparison page, as a user opens them: rendered in headless Chromium with
the network cut off, read through the DOM; the study in optuna-dashboard's own server; the page in MLflow."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from wsgiref.util import setup_testing_defaults

import optuna
import pytest
from conftest import REPO

from autoquant.cli import main

QUICKSTART = REPO / "experiments" / "quickstart.yaml"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Where the screenshot is kept for people to look at (CI keeps the folder as an artifact).
ARTIFACTS = Path(os.environ.get("AUTOQUANT_TEST_ARTIFACTS", REPO / "build" / "test-artifacts"))


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def quickstart_runs(tmp_path_factory):
    """The README's quickstart at its limit and at 2 pt, on fewer trials: their run directories."""
    tmp = tmp_path_factory.mktemp("page")
    runs = []
    for name, extra in (("limit1", ["--trials", "12"]), ("limit2", ["--max-accuracy-drop", "2", "--trials", "6"])):
        out = tmp / name
        assert main([str(a) for a in ("search", QUICKSTART, "--out", out, "--quiet", *extra)]) in (0, 3)
        runs.append(out)
    return runs


class Dom(HTMLParser):
    """The elements a test reads: every start tag with its attributes, and the text of the document."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def find(self, tag: str, css: str | None = None, **data) -> list[dict]:
        return [a for t, a in self.tags if t == tag and (css is None or css in a.get("class", "").split())
                and all(a.get(f"data-{k}") == str(v) for k, v in data.items())]


def offline_chromium(*args: str, profile: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    """Chromium without a network: every host resolves nowhere and every request goes to a closed port."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
             "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={profile}"]
    return subprocess.run([CHROMIUM, *flags, *args], check=False, capture_output=True, text=True,
                          timeout=timeout)


def study_json(run: Path) -> dict:
    study = optuna.load_study(study_name="quickstart_digits", storage=f"sqlite:///{run / 'study.db'}")
    return {"complete": len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))),
            "export": json.loads((run / "best" / "record.json").read_text()) if (run / "best").is_dir() else None}


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium package is not installed (.ci/run installs it)")
def test_the_study_page_renders_offline_and_its_figures_are_the_records(quickstart_runs, tmp_path):
    run = quickstart_runs[0]
    page = run / "report.html"
    text = page.read_text()
    assert "<script" not in text and "http://" not in text and "https://" not in text  # nothing to fetch
    rendered = offline_chromium("--dump-dom", page.resolve().as_uri(), profile=tmp_path / "profile")
    assert rendered.returncode == 0, rendered.stderr[-2000:]
    dom = Dom(rendered.stdout)
    facts = study_json(run)
    # one point per finished trial on the front
    assert len(dom.find("circle", "trial")) == facts["complete"]
    headline = {a["data-field"]: a for a in dom.find("div") if "data-field" in a}
    record = facts["export"]
    assert record is not None, "the quickstart exports at its limit"
    objectives = record["objectives"]
    assert float(headline["accuracy"]["data-value"]) == pytest.approx(objectives["accuracy"])
    assert float(headline["accuracy"]["data-drop"]) == pytest.approx(objectives["accuracy_drop"])
    assert float(headline["bitops"]["data-value"]) == pytest.approx(objectives["bitops_fraction"])
    assert float(headline["confirmed_drop"]["data-value"]) == pytest.approx(objectives["confirmed_accuracy_drop"])
    assert float(headline["limit"]["data-value"]) == 1.0 and int(headline["complete"]["data-value"]) == facts["complete"]
    exported = int(headline["trial"]["data-value"])
    assert len(dom.find("polygon", "export", trial=exported)) == 1  # the star is the export's trial
    layers = dom.find("tr")
    assert {a["data-layer"] for a in layers if "data-layer" in a} == {la["name"] for la in record["layers"]}
    for section in ("headline", "front", "layers", "sensitivity", "timeline", "notes", "trials"):
        assert dom.find("section", None) and any(a.get("id") == section for a in dom.find("section")), section
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "report.png"
    taken = offline_chromium(f"--screenshot={shot}", "--window-size=1280,2200", page.resolve().as_uri(),
                             profile=tmp_path / "profile")
    assert taken.returncode == 0 and shot.stat().st_size > 20_000, taken.stderr[-2000:]


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium package is not installed (.ci/run installs it)")
def test_two_quickstart_runs_at_different_limits_are_compared_and_named(quickstart_runs, tmp_path, capsys):
    code, _, err = run_cli(capsys, "report", *quickstart_runs, "--out", tmp_path / "cmp")
    assert code == 0, err
    page = tmp_path / "cmp" / "report.html"
    assert {p.name for p in (tmp_path / "cmp").iterdir()} >= {"report.html", "report.md", "report.png"}
    rendered = offline_chromium("--dump-dom", page.resolve().as_uri(), profile=tmp_path / "profile")
    dom = Dom(rendered.stdout)
    names = {a["data-study"] for a in dom.find("tr") if "data-study" in a}
    assert names == {"limit1", "limit2"}
    for run, name in zip(quickstart_runs, ("limit1", "limit2")):
        assert len(dom.find("circle", "trial", study=name)) == study_json(run)["complete"]
    assert "limit1" in "".join(dom.text) and "limit2" in "".join(dom.text)


def test_a_page_is_rebuilt_and_a_malformed_run_directory_is_one_line(quickstart_runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(quickstart_runs[0], run)
    (run / "report.html").unlink()
    code, out, _ = run_cli(capsys, "report", run)
    assert code == 0 and (run / "report.html").is_file() and str(run / "report.html") in out
    damaged = {"record.json": lambda d: (d / "best" / "record.json").write_text('{"layers": [1'),
               "sensitivity.csv": lambda d: (d / "sensitivity.csv").write_text("layer,a\nx,1,2,3\n"),
               "study.db": lambda d: (d / "study.db").write_bytes(b"")}
    for name, damage in damaged.items():
        broken = tmp_path / name
        shutil.copytree(quickstart_runs[0], broken)
        for f in broken.glob("study.db-*"):
            f.unlink()
        (broken / "report.html").unlink()
        damage(broken)
        code, _, err = run_cli(capsys, "report", broken)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "Traceback" not in err and name in lines[0], err
        assert not (broken / "report.html").exists()  # never a broken page
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli(capsys, "report", empty)
    assert code == 2 and "not an autoquant search directory" in err


def test_the_study_opens_in_optuna_dashboard_with_named_values(quickstart_runs):
    """optuna-dashboard's own server (its WSGI app, in process) answers its API for the finished study: the two
    values named, each trial's result readable in words and units."""
    import optuna_dashboard

    app = optuna_dashboard.wsgi(optuna.storages.RDBStorage(f"sqlite:///{quickstart_runs[0] / 'study.db'}"))

    def get(path: str, query: str = "") -> dict:
        environ: dict = {}
        setup_testing_defaults(environ)
        environ.update(PATH_INFO=path, QUERY_STRING=query, REQUEST_METHOD="GET")
        status = []
        body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
        assert status[0].startswith("200"), (path, status, body[:300])
        return json.loads(body)

    (summary,) = get("/api/studies")["study_summaries"]
    assert summary["study_name"] == "quickstart_digits" and summary["directions"] == ["maximize", "minimize"]
    detail = get(f"/api/studies/{summary['study_id']}", "after=0")
    assert detail["objective_names"] == ["top1 accuracy (%)", "latency (ratio to FP32)"]
    complete = [t for t in detail["trials"] if t["state"] == "Complete"]
    assert len(complete) == study_json(quickstart_runs[0])["complete"]
    for t in complete:
        said = {a["key"]: a["value"] for a in t["user_attrs"]}["summary"]
        assert said.startswith("accuracy ") and "pt" in said and "x FP32" in said


def test_the_page_is_an_artifact_of_the_studys_mlflow_run(quickstart_runs):
    from mlflow import MlflowClient

    from autoquant.search import RunPaths
    from autoquant.search import trial_attrs as attrs

    run = quickstart_runs[0]
    study = optuna.load_study(study_name="quickstart_digits", storage=RunPaths(run).storage)
    client = MlflowClient(tracking_uri=RunPaths(run).tracking)
    assert "report.html" in {a.path for a in client.list_artifacts(attrs.parent_run(study))}
