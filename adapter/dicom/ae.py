"""The SCP's AE options: one small value object built from Settings and the policy (STYLE §5),
so the SCP never reads the environment and tests build it directly."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from adapter.config import Settings
from adapter.errors import ConfigurationError
from adapter.model.ae_title import Network, check_ae_title, split_caller
from adapter.model.network import is_in
from adapter.model.policy import Policy


@dataclass(frozen=True)
class AeOptions:
    """Where and as whom the SCP listens, and whom it lets in.

    ``allowed_ae_titles`` are the calling AE titles accepted at association, each from any host
    or, written ``AE@address`` or ``AE@network``, from those hosts only (:attr:`callers`); empty
    means every caller is refused (fail closed). Timeouts are in seconds; ``max_pdu`` 0 means no limit.
    """

    ae_title: str = "ADAPTER"
    host: str = "127.0.0.1"
    port: int = 11112
    allowed_ae_titles: tuple[str, ...] = ()
    max_pdu: int = 4 * 1024 * 1024
    acse_timeout: float = 5.0        # ARTIM: the whole A-ASSOCIATE-RQ within this of the connection
    dimse_timeout: float = 60.0      # waiting for the rest of a DIMSE message
    network_timeout: float = 60.0    # an idle association is aborted after this
    maximum_associations: int = 32   # concurrent associations (each has its own thread)
    max_object_bytes: int = 50 * 1024 * 1024  # a received data set's largest size on disk; 0: no limit
    require_called_ae_title: bool = False  # reject a request calling another AE title than ae_title
    #: connections from one address not associated yet (the rest from it are closed on arrival)
    max_pending_per_address: int = 4
    #: each allowed title and the networks it may call from (None: any host); from allowed_ae_titles
    callers: dict[str, tuple[Network, ...] | None] = dataclasses.field(default_factory=dict, compare=False,
                                                                         repr=False)
    #: titles bound to hosts in one list and allowed bare in the other: allowed from any host
    unbound: tuple[str, ...] = dataclasses.field(default=(), compare=False, repr=False)

    def may_call(self, title: str, address: str) -> bool:
        """Whether the allowed calling AE ``title`` may call from ``address`` (an IP address)."""
        if title not in self.callers:
            return False
        networks = self.callers[title]
        return networks is None or is_in(address.split("%", 1)[0], list(networks))

    def __post_init__(self) -> None:
        object.__setattr__(self, "ae_title", check_ae_title(self.ae_title, "ADAPTER_AE_TITLE"))
        callers: dict[str, tuple[Network, ...] | None] = {}
        bound: set[str] = set()
        for entry in self.allowed_ae_titles:
            title, network = split_caller(entry, "allowed AE titles")
            hosts = callers.get(title, ())
            if network is not None:
                bound.add(title)
            # a title allowed from any host somewhere is allowed from any host
            callers[title] = None if network is None or (title in callers and hosts is None) \
                else (*(hosts or ()), network)
        object.__setattr__(self, "allowed_ae_titles", tuple(callers))
        object.__setattr__(self, "callers", callers)
        object.__setattr__(self, "unbound", tuple(t for t in callers if t in bound and callers[t] is None))
        if not 0 <= self.port <= 65535:
            raise ConfigurationError("ADAPTER_DICOM_PORT must be 0..65535")
        if self.max_pdu < 0:
            raise ConfigurationError("ADAPTER_DICOM_MAX_PDU must not be negative")
        if self.acse_timeout <= 0:
            raise ConfigurationError("ADAPTER_DICOM_ACSE_TIMEOUT must be positive")
        if self.max_pending_per_address < 1:
            raise ConfigurationError("ADAPTER_DICOM_MAX_PENDING_PER_ADDRESS must be at least 1")
        if self.max_object_bytes < 0:
            raise ConfigurationError("the largest DICOM object must not be negative")

    @classmethod
    def from_settings(cls, settings: Settings, policy: Policy) -> AeOptions:
        """The options of ``settings``; the allowed callers are ADAPTER_DICOM_ALLOWED_AE_TITLES
        together with the policy's ``allowedAETitles``; the largest object received is
        ADAPTER_MAX_UPLOAD_BYTES, as for STOW-RS; the ARTIM timeout ADAPTER_DICOM_ACSE_TIMEOUT."""
        return cls(ae_title=settings.ae_title, host=settings.dicom_host, port=settings.dicom_port,
                   allowed_ae_titles=(*settings.allowed_ae_titles, *policy.allowed_ae_titles),
                   max_pdu=settings.dicom_max_pdu, max_object_bytes=settings.max_upload_bytes,
                   require_called_ae_title=settings.dicom_require_called_ae_title,
                   acse_timeout=settings.dicom_acse_timeout,
                   max_pending_per_address=settings.dicom_max_pending_per_address)


__all__ = ["AeOptions", "split_caller"]
