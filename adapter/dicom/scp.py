"""The C-STORE SCP: receives objects from a PACS or modality (PS3.4 Annex B) and answers
C-ECHO (Annex A).

Wiring decisions:

* **Who may associate.** The calling AE title must be one of ``AeOptions.allowed_ae_titles``
  (ADAPTER_DICOM_ALLOWED_AE_TITLES with the policy's ``allowedAETitles``); others are rejected
  with A-ASSOCIATE-RJ (rejected-permanent, "calling AE title not recognised"). An empty list
  rejects every caller: fail closed, the SCP never accepts anonymous senders.
* **What is accepted.** Presentation contexts for the SOP classes of mappings/dicom.yaml
  (``receive.sopClasses``) and Verification. Any other SOP class is refused at negotiation
  (abstract syntax not supported), so its C-STORE is never sent. Image classes accept Explicit
  and Implicit VR Little Endian and JPEG Baseline: the syntaxes whose first frame becomes the
  Binary without decoding (the JPEG stream as received) or losslessly (a PNG of native
  samples), see adapter.mapping.dicom_fhir.extract_image. A sender holding JPEG 2000, JPEG-LS,
  RLE or lossless JPEG objects finds no context and must convert (most SCUs offer to);
  accepting them and refusing every C-STORE afterwards would only hide the refusal. Objects are
  stored as received, never transcoded. Encapsulated PDF accepts the uncompressed syntaxes only
  (it has no pixel data). Deflated Explicit VR Little Endian is not accepted: inflating happens
  in memory, a deflate bomb away from exhausting it.
* **Speed.** Datasets are spooled straight to a file while they arrive
  (``_config.STORE_RECV_CHUNKED_DATASET``), so no object is held in memory nor decoded by
  pynetdicom; the handler reads the attributes it needs and leaves pixel data alone.
  TCP_NODELAY is set on every accepted socket; the maximum PDU is ADAPTER_DICOM_MAX_PDU.
* **Durability.** The C-STORE handler commits the object before it answers Success (see
  adapter.dicom.handlers). Each association has its own thread, so senders run concurrently.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Self

from pydicom import config as pydicom_config
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit
from pynetdicom import AE, _config, evt

from adapter.dicom.ae import AeOptions
from adapter.dicom.handlers import handle_conn_close, handle_conn_open, handle_echo, handle_store
from adapter.errors import ConfigurationError
from adapter.services.dicom_ingest import DicomIngestService

log = logging.getLogger("adapter.dicom")

#: Verification SOP Class (C-ECHO, PS3.4 Annex A).
VERIFICATION = "1.2.840.10008.1.1"
#: Encapsulated PDF Storage: a document, no pixel data.
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"

UNCOMPRESSED_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
IMAGE_SYNTAXES = (*UNCOMPRESSED_SYNTAXES, JPEGBaseline8Bit)

# A calling AE title arrives in a 16-byte field: a longer required title matches no caller.
_NOBODY = "<no-caller-is-allowed>"


class _ApplicationEntity(AE):
    """pynetdicom's AE, except that an empty list of required calling AE titles refuses every
    caller instead of accepting all (pynetdicom's meaning of an empty list)."""

    def __init__(self, ae_title: str, allowed: tuple[str, ...]) -> None:
        super().__init__(ae_title=ae_title)
        self._allowed = list(allowed)

    @property
    def require_calling_aet(self) -> list[str]:
        return self._allowed or [_NOBODY]

    @require_calling_aet.setter
    def require_calling_aet(self, ae_titles: list[str]) -> None:
        raise AttributeError("the allowed calling AE titles come from AeOptions")


def syntaxes_for(sop_class: str) -> tuple[str, ...]:
    """The transfer syntaxes accepted for ``sop_class``."""
    return UNCOMPRESSED_SYNTAXES if sop_class == ENCAPSULATED_PDF else IMAGE_SYNTAXES


class StoreSCP:
    """The SCP on ``options.host:options.port`` (port 0: an ephemeral one, see :attr:`port`).

    ``start()`` returns once the socket listens; associations are served in background
    threads until ``stop()``. Usable as a context manager.
    """

    def __init__(self, options: AeOptions, ingest: DicomIngestService,
                 sop_classes: Iterable[str] | None = None) -> None:
        self.options = options
        self._ingest = ingest
        self._sop_classes = tuple(dict.fromkeys(sop_classes if sop_classes is not None
                                                else ingest.accepted_sop_classes))
        if not self._sop_classes:
            raise ConfigurationError("the SCP accepts no SOP class (mappings/dicom.yaml receive.sopClasses)")
        self._ae: _ApplicationEntity | None = None
        self._server: Any = None
        self._lock = threading.Lock()

    def _build_ae(self) -> _ApplicationEntity:
        o = self.options
        ae = _ApplicationEntity(o.ae_title, o.allowed_ae_titles)
        ae.maximum_pdu_size = o.max_pdu
        ae.acse_timeout = o.acse_timeout
        ae.dimse_timeout = o.dimse_timeout
        ae.network_timeout = o.network_timeout
        ae.maximum_associations = o.maximum_associations
        ae.require_called_aet = False  # a PACS may call us by another configured title
        ae.add_supported_context(VERIFICATION)
        for sop_class in self._sop_classes:
            ae.add_supported_context(sop_class, list(syntaxes_for(sop_class)))
        return ae

    def start(self) -> None:
        """Bind and listen; raises ConfigurationError when the address cannot be bound."""
        with self._lock:
            if self._server is not None:
                return
            # Spool C-STORE datasets to disk as they arrive instead of holding them in memory.
            # A process-wide pynetdicom switch; it changes nothing for SCU associations.
            _config.STORE_RECV_CHUNKED_DATASET = True
            # Read received values as sent, without validating them against their VR: pydicom's
            # validation warnings quote the value (a name, an ID) into the logs. Process-wide too.
            pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
            ae = self._build_ae()
            handlers: list[Any] = [
                (evt.EVT_CONN_OPEN, handle_conn_open),
                (evt.EVT_CONN_CLOSE, handle_conn_close),
                (evt.EVT_C_ECHO, handle_echo),
                (evt.EVT_C_STORE, handle_store, [self._ingest]),
            ]
            try:
                self._server = ae.start_server((self.options.host, self.options.port), block=False,
                                               evt_handlers=handlers)
            except OSError as exc:
                ae.shutdown()
                raise ConfigurationError(f"the DICOM SCP cannot listen on {self.options.host}:"
                                         f"{self.options.port} ({exc.strerror or exc})") from exc
            self._ae = ae
        if not self.options.allowed_ae_titles:
            log.warning("no calling AE title is allowed (ADAPTER_DICOM_ALLOWED_AE_TITLES and the policy's "
                        "allowedAETitles are empty): every association will be rejected")
        log.info("DICOM SCP %s on %s:%d (calling AE titles allowed: %s)", self.options.ae_title, self.host,
                 self.port, ", ".join(self.options.allowed_ae_titles) or "none")

    @property
    def host(self) -> str:
        return str(self._server.server_address[0]) if self._server is not None else self.options.host

    @property
    def port(self) -> int:
        """The port listened on (the ephemeral one chosen when the options said 0)."""
        return int(self._server.server_address[1]) if self._server is not None else self.options.port

    @property
    def running(self) -> bool:
        return self._server is not None

    def stop(self, timeout: float = 30.0) -> None:
        """Stop listening, abort open associations and wait (up to ``timeout`` seconds) for
        their threads, so an ingest under way finishes before the store is closed."""
        with self._lock:
            ae, self._ae, self._server = self._ae, None, None
        if ae is None:
            return
        associations = list(ae.active_associations)
        ae.shutdown()
        for assoc in associations:
            assoc.join(timeout)
        log.info("DICOM SCP stopped")

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


__all__ = ["IMAGE_SYNTAXES", "UNCOMPRESSED_SYNTAXES", "StoreSCP", "syntaxes_for"]
