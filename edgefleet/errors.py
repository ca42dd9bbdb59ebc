"""The one exception tree of edgefleet.

Every error edgefleet raises on purpose derives from :class:`EdgefleetError`, so a caller
can catch the whole family with one clause, and the CLI turns any of them into a one-line
message and exit status 2 instead of a traceback::

    EdgefleetError
    ├── InputError              bad input from a user: data files, options, records
    │   ├── DataError           a data file or table that cannot be used for training
    │   ├── RecordError         a record to score that does not fit the feature schema
    │   └── RequestError        an HTTP request refused as it stands: oversize, too deep, malformed
    ├── BundleError             a model bundle that must not be used
    │   ├── ManifestError       manifest.json missing, truncated or not a valid manifest
    │   ├── SignatureError      unsigned, wrongly signed, or signed by a key we do not trust
    │   ├── ArtifactError       an artifact missing, of the wrong size, or with a hash mismatch
    │   ├── DowngradeError      a version lower than the running one without a signed rollback
    │   ├── RolloutError        a rollout message that must not be followed (malformed, stale)
    │   │   └── StaleRolloutError   genuinely signed, but expired or older than one accepted
    │   └── SelfTestError       the model does not reproduce its golden vectors
    ├── ConversionError         a fitted model that cannot be exported
    │   ├── UnsupportedModelError   no converter for this estimator and format
    │   └── ParityError         an exported artifact disagrees with scikit-learn
    ├── RuntimeUnavailableError no installed runtime can run any artifact of the bundle
    ├── BrokerError             the MQTT broker is unreachable, refused, or did not answer
    │   └── BackpressureError   too many messages await the broker's acknowledgement
    ├── RegistryError           unknown model version, corrupt registry
    ├── StoreError              the monitor database cannot be opened or written
    ├── KeyFileError            a signing or public key that cannot be read
    └── IdentityError           a fleet CA, certificate or identity folder that cannot be used

Messages say what was wrong and what to do about it; they never need a traceback to be
understood.
"""

from __future__ import annotations


class EdgefleetError(Exception):
    """Base of every error edgefleet raises on purpose."""


class InputError(EdgefleetError):
    """Bad input from a user."""


class DataError(InputError):
    """A data file or table that cannot be used for training."""


class RecordError(InputError):
    """A record to score that does not fit the feature schema.

    ``record`` is the index of the offending record in the batch, ``field`` the feature name.
    """

    def __init__(self, message: str, *, record: int | None = None, field: str | None = None):
        where = []
        if record is not None:
            where.append(f"record {record}")
        if field is not None:
            where.append(f"field {field!r}")
        prefix = (", ".join(where) + ": ") if where else ""
        super().__init__(prefix + message)
        self.record = record
        self.field = field


class RequestError(InputError):
    """An HTTP request refused before it reaches the product: a body over the limit, JSON
    nested too deeply, too many records, no Content-Length.

    ``status`` is the HTTP status to answer with (400, 411, 413).
    """

    def __init__(self, message: str, *, status: int = 400):
        super().__init__(message)
        self.status = status


class BundleError(EdgefleetError):
    """A model bundle that must not be used."""


class ManifestError(BundleError):
    """manifest.json missing, truncated or not a valid manifest."""


class SignatureError(BundleError):
    """Unsigned, wrongly signed, or signed by a key that is not trusted."""


class ArtifactError(BundleError):
    """An artifact missing, of the wrong size, or whose sha256 does not match the manifest."""


class DowngradeError(BundleError):
    """A bundle older than the running model, without a signed rollback."""


class RolloutError(BundleError):
    """A rollout message that must not be followed: malformed, oversize, for another
    fleet, or older than the state already applied."""


class StaleRolloutError(RolloutError):
    """A genuinely signed rollout state that is no longer current: expired, or with a
    serial below the highest one a device accepted (a replay)."""


class SelfTestError(BundleError):
    """The model does not reproduce the golden vectors of its manifest."""


class ConversionError(EdgefleetError):
    """A fitted model that cannot be exported."""


class UnsupportedModelError(ConversionError):
    """No converter is registered for this estimator and format."""


class ParityError(ConversionError):
    """An exported artifact disagrees with scikit-learn beyond the tolerance."""


class RuntimeUnavailableError(EdgefleetError):
    """No installed runtime can run any artifact of the bundle."""


class BrokerError(EdgefleetError):
    """The MQTT broker is unreachable, refused us, or did not answer in time."""


class BackpressureError(BrokerError):
    """Too many published messages await the broker's acknowledgement; retry later."""


class RegistryError(EdgefleetError):
    """Unknown model version or an unusable registry."""


class StoreError(EdgefleetError):
    """The monitor database cannot be opened or written (down, full, refused)."""


class KeyFileError(EdgefleetError):
    """A signing or public key that cannot be read."""


class IdentityError(EdgefleetError):
    """A fleet CA, certificate or identity folder that cannot be used (missing, mixed up,
    revoked, readable by others, or of another fleet or device)."""
