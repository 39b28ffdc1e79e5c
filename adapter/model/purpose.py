"""Purpose of use and the request context every read-capable service requires."""

from __future__ import annotations

from dataclasses import dataclass, field

V3_ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
#: The same code system by its OID (HL7's identifier of v3-ActReason), as some systems send it.
V3_ACT_REASON_SYSTEMS = frozenset({V3_ACT_REASON, "urn:oid:2.16.840.1.113883.5.8"})


@dataclass(frozen=True)
class PurposeOfUse:
    """A v3-ActReason code (http://terminology.hl7.org/CodeSystem/v3-ActReason)."""

    code: str
    system: str = V3_ACT_REASON


@dataclass(frozen=True)
class MhdTransaction:
    """The IHE MHD transaction a request is, when it is one the adapter serves as Document
    Recipient or Document Responder (https://profiles.ihe.net/ITI/MHD/): ITI-65 Provide Document
    Bundle, ITI-67 Find Document References, ITI-68 Retrieve Document. Its AuditEvents take MHD's
    shape for that transaction (adapter.mapping.audit_mhd) instead of the generic BALP one.

    ``submission_set``: of ITI-65, the SubmissionSet's uniqueId (system, value) as the Document
    Source sent it, which the event names (entity[submissionSet]); ``server_url``: this server's
    FHIR base, the network address of the Recipient or Responder agent (a URI)."""

    code: str
    submission_set: tuple[str, str] | None = None
    server_url: str | None = None


@dataclass(frozen=True)
class RequestContext:
    """Who asks, why, and through which channel. Built at the edge (HTTP or DICOM)."""

    purpose: PurposeOfUse
    actor: str = "anonymous"
    #: The request's id as its answer and the logs give it: for HTTP the caller's X-Request-Id
    #: when it sent one, which another request may carry too, else the adapter's own.
    request_id: str = ""
    #: The network address of the peer: for HTTP the TCP connection's (a proxy's, behind one).
    client_address: str | None = None
    #: The client address a trusted proxy forwarded (X-Forwarded-For from one of
    #: ADAPTER_TRUSTED_PROXIES: adapter.api.forwarded), recorded beside ``client_address``.
    forwarded_for: str | None = None
    #: The adapter's own id of the request, unique (adapter.api.request_id); empty: ``request_id``
    #: is the adapter's own (a DICOM exchange, a forwarding job).
    own_request_id: str = ""
    channel: str = "http"
    #: The request as it was received (its request line; a search by POST adds its body, a
    #: followed ``_page`` link the search it holds): the
    #: AuditEvent of a search records it, base64-encoded (IHE BALP Query, entity[query]).
    query: bytes | None = None
    #: The DICOM peer's AE title, for a DIMSE exchange (the sending AE of a C-STORE received, the
    #: PACS a photo is forwarded to): the AuditEvent names the peer by it.
    ae_title: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
    #: The IHE MHD transaction the request is, if any: its AuditEvents take that transaction's
    #: shape (type and subtype, and the entities MHD adds).
    mhd: MhdTransaction | None = None
    #: The adapter's network address for an HTTP request, a URI (its public base URL): the
    #: AuditEvent's agent[server] gives it (IHE BALP; an MHD transaction gives its FHIR base).
    server_url: str | None = None

    @property
    def audit_request_id(self) -> str:
        """The id the AuditEvents give the request: the adapter's own, unique."""
        return self.own_request_id or self.request_id

    @property
    def client_request_id(self) -> str | None:
        """The X-Request-Id the caller chose, when it sent one: recorded beside
        :attr:`audit_request_id`, which it does not replace (two requests may carry the same)."""
        return self.request_id if self.own_request_id and self.request_id != self.own_request_id else None
