"""One exception hierarchy. The command layer catches AvemoError once and prints one line
(`avemo COMMAND: error: ...`) with the class's exit code; anything else is a bug and keeps its traceback.

    AvemoError
    ├── ConfigError      a setting, flag or config file is wrong                (exit 2)
    ├── DataError        input data is unusable: labels, media, shards, samples (exit 2)
    ├── WeightsError     pretrained weights cannot be found, fetched or trusted (exit 2)
    ├── CheckpointError  a checkpoint or exported model cannot be used          (exit 2)
    ├── ClusterError     the Dask cluster cannot run the work                   (exit 2)
    └── TrainingError    training produced nothing usable (0 samples, a non-finite loss) (exit 2)
"""
from __future__ import annotations


class AvemoError(Exception):
    """An expected failure, reported to the user as one line."""
    exit_code = 2


class ConfigError(AvemoError):
    """A configuration problem: unknown key, wrong type, value out of range, missing config file."""


class DataError(AvemoError):
    """Input data that cannot be used as asked: label files, media layout, inputs, shards."""


class WeightsError(AvemoError):
    """Pretrained weights that cannot be found, downloaded, verified or loaded safely."""


class CheckpointError(AvemoError):
    """A checkpoint or exported model that cannot be read safely or does not fit."""


class ClusterError(AvemoError):
    """The Dask cluster cannot run the build (no scheduler, no matching worker resources)."""


class TrainingError(AvemoError):
    """A run that trained nothing or diverged: nothing broken or untrained is saved."""
