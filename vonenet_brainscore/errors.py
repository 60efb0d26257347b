"""Exceptions with messages that say what went wrong and what to do about it."""


class VOneNetError(Exception):
    """Base class of every error this package raises on purpose."""


class UnknownModelError(VOneNetError, KeyError):
    """A model name or Brain-Score identifier that the catalogue does not know."""

    def __str__(self):  # KeyError would otherwise print the message inside quotes
        return str(self.args[0]) if self.args else ''


class WeightsUnavailableError(VOneNetError):
    """Published weights could not be downloaded and are not in the cache."""


class CheckpointError(VOneNetError):
    """A checkpoint file that is truncated, corrupt, unsafe, or of another architecture."""


class CommitmentError(VOneNetError):
    """A commitments file that is malformed or names a layer the model does not have."""


class StimulusError(VOneNetError):
    """An image that cannot be read, or a stimulus set that does not fit the request."""


class DataError(VOneNetError):
    """Neural or behavioural data that is missing or malformed."""


class DataWarning(UserWarning):
    """An entry of an image folder that is not a class folder or not an image, and is skipped."""


class DeviceError(VOneNetError, RuntimeError):
    """The requested GPUs are not available, or several GPUs were requested without ``torchrun``."""


class SubmissionError(VOneNetError):
    """A Brain-Score submission that cannot be built, or a zip that breaks a rule of the website's upload check."""


class SettingError(VOneNetError, ValueError):
    """An environment variable names a cache folder or a mirror that cannot be used."""


class V1MemoryError(VOneNetError, MemoryError):
    """Scoring V1 on the property benchmarks needs more memory than is available (the full layer map is
    recorded for 3,528 receptive-field images); the message names the model, the layer, the estimate and
    what to do."""


class BrainModelError(VOneNetError):
    """A Brain-Score model that cannot be loaded or committed as asked (e.g. no V1 layer without --layer)."""
