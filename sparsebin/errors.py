"""The faults a user can cause, one class each; the message is the sentence to show.

The command line (`sparsebin.command.run_command`) prints these as `error: <message>` and exits with status 2;
any other exception is a bug and keeps its traceback. Each is also a
ValueError, since each reports a value (a setting, a file, a job id) that
cannot be used.
"""


class SparsebinError(ValueError):
    """A fault in what the user asked for or gave; str(error) is one sentence saying which and why."""


class ConfigError(SparsebinError):
    """A setting is out of range or unknown; the message says which and why."""


class DataError(SparsebinError):
    """A dataset or input file is unusable; the message names the file and the row or column."""


class RunFileError(SparsebinError):
    """A run folder or checkpoint lacks an artifact, holds a damaged one, or belongs to another config."""


class JobError(SparsebinError):
    """A job does not exist, or cannot make the change asked of it in its state."""


class DuplicateRunError(JobError):
    """A run to queue is identical, in every setting and seed, to one already queued, running or finished."""


class PhraseError(SparsebinError):
    """A phrase cannot be encoded: it is empty, or the dataset has no model to embed it with."""


class TrainingError(SparsebinError):
    """Training cannot go on: too many steps had a loss or gradient that was not finite."""


class QueryError(SparsebinError):
    """A bit expression, a bit to switch or a concept to look up cannot be used; the message names the fault."""
