"""Errors that mean "the user must fix something". The CLI prints them as one line and exits 2."""

import re


def first_line(exc: BaseException, limit: int = 160) -> str:
    """A third-party error (onnx, onnxruntime, SQLAlchemy, MLflow, …) as a clause of a one-line message:
    its first line, cut to `limit` characters, or its type when it has no text."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else exc.__class__.__name__)[:limit]


def runtime_reason(exc: BaseException, limit: int = 200) -> str:
    """onnxruntime's error as a clause: the node it failed in and its status message, without the C++ source file,
    function signature and failed check that precede the message proper."""
    text = first_line(exc, 2000)
    node = re.search(r"running (\w+) node\. Name:'([^']*)'", text)
    status = text.split("Status Message:", 1)[1].strip() if "Status Message:" in text else text
    status = re.sub(r"^\S+\.(h|cc|cpp):\d+ [^(]*\([^)]*\)\s*", "", status)  # source location and function
    status = re.sub(r"^[^.]*? was false\.\s*", "", status)  # the check that failed, before the sentence saying what
    return (f"{node.group(1)} node '{node.group(2)}': " if node else "") + status[:limit]


class AutoquantError(Exception):
    """Base of every user-facing error; the message says what is wrong and how to fix it."""

    exit_code = 2


class ConfigError(AutoquantError):
    """An experiment, plan or search-space file is malformed."""


class ModelError(AutoquantError):
    """The model file is missing, unreadable or not something we can quantize."""


class DataError(AutoquantError):
    """Calibration or evaluation data is missing or does not fit the model."""


class PlanError(AutoquantError):
    """A quantization plan or record file does not fit the model it is applied to."""
