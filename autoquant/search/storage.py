"""Where a study lives: the run directory's files, the Optuna storage (SQLite in the run directory, or any
SQLAlchemy URL for workers on several machines), and the study's fingerprint — what its trials must share to be
comparable, checked when it is resumed."""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from ..config import Experiment
from ..errors import ConfigError, first_line
from ..fileio import atomic_write_bytes, keep_sqlite_template, seed_sqlite_url
from ..workspace import Workspace

STORAGE_CREATE_ATTEMPTS = 5


@dataclass(frozen=True)
class RunPaths:
    """A run directory and the one checked reader of what a search left in it: run.json (which experiment ran) and
    the study in study.db (or the experiment's own storage)."""

    root: Path

    @property
    def storage(self) -> str:
        return f"sqlite:///{(self.root / 'study.db').resolve()}"

    @property
    def tracking(self) -> str:
        return f"sqlite:///{(self.root / 'mlflow.db').resolve()}"

    @property
    def run_file(self) -> Path:
        return self.root / "run.json"

    def write_run_file(self, experiment: Path | None) -> None:
        atomic_write_bytes(self.run_file, json.dumps({"experiment": str(experiment)}).encode())

    def experiment(self) -> Path:
        """The experiment file the search in this directory ran (run.json)."""
        if not self.root.is_dir():
            raise ConfigError(f"{self.root} is not an autoquant search directory (no such directory): give the --out "
                              "of a search")
        if not self.run_file.is_file():
            raise ConfigError(f"{self.root} is not an autoquant search directory (no run.json): give the --out of a search")
        try:
            raw = json.loads(self.run_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
            problem = f"is not JSON ({first_line(exc, 80)})"
        else:
            if isinstance(raw, dict) and isinstance(raw.get("experiment"), str) and raw["experiment"]:
                return Path(raw["experiment"])
            problem = "has no 'experiment' entry"
        raise ConfigError(f"{self.run_file} {problem}: it names the experiment file the search ran; write "
                          '{"experiment": "/path/to/experiment.yaml"} into it, or rerun the search')

    def check_storage_file(self, url: str) -> None:
        """A study.db that exists but is empty or not SQLite would silently become a new, empty study —
        and the next export would replace best/ with it."""
        db = self.root / "study.db"
        if url != self.storage or not db.exists():
            return
        with open(db, "rb") as f:
            header = f.read(16)
        if header != b"SQLite format 3\x00":
            state = "is empty (0 bytes)" if not header else "is not a SQLite database (corrupt?)"
            raise ConfigError(f"{db} {state}: the trials it held cannot be read; move it away to start over, or "
                              "use a new --out")

    def study(self, exp: Experiment) -> optuna.Study:
        """The finished (or running) study of `exp` in this directory, read-only use: a missing, empty or damaged
        store, or one without the experiment's study, is a one-line error that names the file."""
        url = exp.search.storage or self.storage
        own = url == self.storage
        if own and not (self.root / "study.db").is_file():
            raise ConfigError(f"{self.root} has no study.db: give the --out directory of a search that ran")
        self.check_storage_file(url)
        storage = make_storage(url, own=self.root / "study.db" if own else None)
        where = self.root / "study.db" if own else url
        try:
            study = optuna.load_study(study_name=exp.name, storage=storage)
            study.get_trials(deepcopy=False)  # a damaged store fails here, not half-way through a report
            return study
        except KeyError:
            raise ConfigError(f"{where} holds no study named '{exp.name}': give the run directory of that experiment "
                              "(or move the damaged file away and rerun the search)") from None
        except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError) as exc:
            raise ConfigError(f"{where} cannot be read ({first_line(exc.__cause__ or exc)}): it is damaged; move it away "
                              "and rerun the search, or give another run directory") from exc


def make_storage(url: str, template_dir: Path | None = None, *, own: Path | None = None) -> RDBStorage:
    """Open (or create) the Optuna storage at `url`. A new SQLite file starts as a copy of the empty store kept in
    `template_dir` (made by the first study with this Optuna), not from Optuna's schema creation. `own`: the run
    directory's study.db the URL points at (what an error names; search.storage is the user's otherwise)."""
    storage = None
    template = None if template_dir is None else template_dir / f"optuna-{optuna.__version__}.db"
    fresh = seed_sqlite_url(url, template)
    fix = f"{own} is damaged or not a study store: move it away to start over, or use a new --out" if own else \
        "check search.storage"
    for attempt in range(STORAGE_CREATE_ATTEMPTS):
        try:
            # A heartbeat lets a later run (or another worker) see trials left RUNNING by a killed process
            # and retry them, instead of counting them as forever in flight.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = RDBStorage(url, heartbeat_interval=10, grace_period=30,
                                     heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2))
            break
        except sqlalchemy.exc.IntegrityError:
            # Two processes opening a new storage at once (a worker, a monitoring script) both create its
            # tables; the loser's stamp of the schema version collides. The tables exist now: open again.
            if attempt == STORAGE_CREATE_ATTEMPTS - 1:
                raise ConfigError(f"cannot open study storage {url}: another process keeps re-creating its tables; "
                                  f"{fix}") from None
            time.sleep(0.2 * (attempt + 1))
        except Exception as exc:  # SQLAlchemy raises many types for bad URLs and unreachable servers
            raise ConfigError(f"cannot open study storage {url}: {first_line(exc)}; {fix}") from exc
    if url.startswith("sqlite"):
        # Optuna commits once per suggested parameter; with SQLite's default rollback journal and full
        # sync that is ~2.5 ms each, a visible share of a trial. WAL with synchronous=NORMAL survives a
        # killed process (only an OS crash can drop the last commits) and halves the cost.
        sqlalchemy.event.listen(storage.engine, "connect", _sqlite_wal)
        storage.engine.dispose()
    if fresh is not None and not storage.get_all_studies():  # empty still: no other process has started a study
        keep_sqlite_template(fresh, template)
    return storage


def _sqlite_wal(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def study_fingerprint(exp: Experiment, ws: Workspace) -> dict[str, str]:
    """What every trial of a study must share to be comparable: model (smoothed or not), data, metric, objective; and
    the confirmation split its exports are confirmed on (a resumed study keeps it)."""
    confirm = ws.splits.confirm
    return {"model_sha256": ws.model_key, "objective": exp.search.objective.study_key, "metric": exp.eval.metric,
            "calibration_sha256": ws.splits.calibration.sha256(), "eval_sha256": ws.splits.eval.sha256(),
            "confirm_sha256": confirm.sha256() if confirm is not None else "none",
            "activation_type": exp.quantization.activation_type, "weight_range": ws.weight_range}


# A pruned trial (stopped early: it could not meet the constraint) is a trial done, like a complete one.
DONE = (TrialState.COMPLETE, TrialState.PRUNED)


def complete_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def done_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=DONE))


