"""Errors that mean "the user must fix something". The CLI prints them as one line and exits 2."""


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
