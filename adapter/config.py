"""Settings, read from the environment with the prefix ``ADAPTER_``.

Built once in ``adapter.__main__`` (or by a test) and passed down; never at import time.
Every field is documented in README.md (a test checks that).
"""

from __future__ import annotations

import difflib
import os
import stat
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from adapter.errors import ConfigurationError
from adapter.model.ae_title import Network
from adapter.model.authority import Authority, parse_authority
from adapter.model.network import proxy_network, stow_sender_network
from adapter.text import is_digits

#: ADAPTER_ variables the adapter sets for its own processes, which are no settings.
INTERNAL_VARIABLES = frozenset({"ADAPTER_SUPERVISOR_PID"})

#: ADAPTER_POLICY's default, relative to the working directory (a checkout, ``make run``).
DEFAULT_POLICY = Path("mappings/policy.yaml")
#: Where an installed package keeps its copy of mappings/, under the installation's data path
#: (pyproject.toml's data-files: ``<venv or prefix>/share/clinical-image-adapter/mappings``).
INSTALLED_MAPPINGS = Path("share", "clinical-image-adapter", "mappings")


def _checkout_mappings() -> Path | None:
    """The source checkout's mappings/ when the package was imported from its checkout (an
    editable install, which ``make run`` makes, or PYTHONPATH): the folder beside ``adapter/``,
    in a project whose pyproject.toml is this one's. None for an installed package (its parent is
    site-packages, which holds no pyproject.toml)."""
    root = Path(__file__).resolve().parent.parent
    try:
        ours = 'name = "clinical-image-adapter"' in (root / "pyproject.toml").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return root / "mappings" if ours and (root / "mappings" / "policy.yaml").is_file() else None


def example_policies() -> list[Path]:
    """The copies of the example policy (mappings/policy.yaml) the package carries: the one a
    non-editable install puts in the environment's data path (or the user's, for ``pip install
    --user``), and the source checkout's, for a package imported from it (an editable install
    installs no data files)."""
    found = []
    for data in (sysconfig.get_path("data"), sysconfig.get_path("data", sysconfig.get_preferred_scheme("user"))):
        candidate = Path(data) / INSTALLED_MAPPINGS / "policy.yaml"
        if candidate.is_file() and candidate not in found:  # the user's data path may be the environment's
            found.append(candidate)
    checkout = _checkout_mappings()
    if checkout is not None:
        found.append(checkout / "policy.yaml")
    return found


def installed_policy() -> Path | None:
    """The example policy ADAPTER_POLICY falls back to (:func:`example_policies`, the installed
    copy first), when there is one."""
    found = example_policies()
    return found[0] if found else None


def _not_a_directory(path: Path) -> Path | None:
    """The path, or the nearest of its parents that exists, when it is not a folder (a regular
    file, say); None when it is one, or cannot be looked at (what then uses it says why)."""
    for candidate in (path, *path.parents):
        try:
            is_dir = stat.S_ISDIR(candidate.stat().st_mode)
        except (FileNotFoundError, NotADirectoryError):  # not there (a file above it: found further up)
            continue
        except OSError:
            return None
        return None if is_dir else candidate
    return None


def allowed_hosts_of(setting: str) -> list[Authority]:
    """The hosts of ADAPTER_ALLOWED_HOSTS ``setting``, each ``host[:port]``; ConfigurationError
    for anything else (a scheme, a path, a wildcard: a name any domain could match would let a
    rebinding page in again: adapter.api.allowed_hosts)."""
    out = []
    for item in (h.strip() for h in setting.split(",")):
        if not item:
            continue
        try:
            out.append(parse_authority(item))
        except ValueError:
            raise ConfigurationError(f"ADAPTER_ALLOWED_HOSTS: '{item[:60]}' is not a host[:port] (a name, an IPv4 "
                                     "address or an IPv6 one in brackets; no scheme, path or wildcard)") from None
    return out


#: The log levels ADAPTER_LOG_LEVEL takes, most verbose first.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True)
class DatabaseTimeouts:
    """How long the adapter waits for PostgreSQL (seconds; SQLite waits its busy timeout): to
    connect, for one statement to run, and for one lock (a row's, or an advisory lock); 0: no limit
    (statement and lock). The statement and lock timeouts are PostgreSQL's own (``statement_timeout``,
    ``lock_timeout``): the server cancels the statement, and the transaction is rolled back."""

    connect: float = 5.0
    statement: float = 30.0
    lock: float = 10.0

    def without_statement_limits(self) -> DatabaseTimeouts:
        """The same connect timeout, statements and locks unbounded (the long commands: verify, audit)."""
        return DatabaseTimeouts(connect=self.connect, statement=0, lock=0)


@dataclass(frozen=True)
class StoreOptions:
    """Where records and image bytes live."""

    database_url: str
    data_dir: Path
    #: Free space the data folder keeps for the database and the audit trail: below it, new
    #: images are refused (0: no reserve).
    min_free_bytes: int = 0
    timeouts: DatabaseTimeouts = DatabaseTimeouts()

    # these three are in adapter.services.data_folder.DATA_FOLDER_ENTRIES too
    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def staging_dir(self) -> Path:
        return self.data_dir / "staging"

    @property
    def quarantine_dir(self) -> Path:
        """Where the removal of unreferenced blobs holds a blob while it checks it one last time
        (same file system as the blobs: a rename moves it)."""
        return self.data_dir / "quarantine"


@dataclass(frozen=True)
class HttpOptions:
    host: str
    port: int
    max_upload_bytes: int


#: The shortest pseudonym key production takes (a key generated into the data folder has 64).
MIN_PSEUDONYM_KEY_LENGTH = 32


class Settings(BaseSettings):
    """All settings of the adapter. Environment variable = ``ADAPTER_`` + field name, upper case."""

    model_config = SettingsConfigDict(env_prefix="ADAPTER_", extra="ignore")

    http_host: str = Field("127.0.0.1", description="Address the HTTP API listens on.")
    http_port: int = Field(8080, ge=0, le=65535, description="Port of the HTTP API.")
    http_workers: int = Field(
        1, ge=1, le=32, description="HTTP worker processes sharing the port. Python runs one thread at a time per "
        "process, so a busy adapter wants about one per CPU core (each costs ~100 MB of memory); 1 keeps a single "
        "process, as `make run` and the tests expect.")
    data_dir: Path = Field(Path("./data"), description="Folder for image files, the SQLite file and keys.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL of the record store; default: SQLite file adapter.db in the data dir. "
        "postgresql+psycopg://… selects PostgreSQL.")
    database_connect_timeout: float = Field(
        5.0, ge=1, le=600, description="Seconds connecting to PostgreSQL may take (libpq's connect_timeout, "
        "whole seconds, at least 2) before the request, readiness check or start fails; the URL's own "
        "?connect_timeout= wins.")
    database_start_wait: float = Field(
        60.0, ge=0, le=3600, description="Seconds `serve` waits at start for a database that does not answer "
        "(connection refused or timed out, a server starting up), trying again with growing pauses, before it "
        "gives up (exit 2); a database that answered and refused (no such database, a password refused) is not "
        "waited for; 0: one attempt.")
    database_statement_timeout: float = Field(
        30.0, ge=0, le=86400, description="Seconds one PostgreSQL statement of `serve` may run (the server's "
        "statement_timeout) before it is cancelled: the request gets 503 transient (DIMSE 0xA700) and nothing of "
        "its transaction is kept; 0: no limit. Not for the schema upgrade and re-indexing at start, nor for "
        "`verify` and `audit`; the URL's own ?options=-c statement_timeout=… wins.")
    database_lock_timeout: float = Field(
        10.0, ge=0, le=86400, description="Seconds a PostgreSQL statement of `serve` may wait for a lock (the "
        "server's lock_timeout: a row another transaction holds, the audit trail's numbering lock) before it is "
        "cancelled, as a statement timeout is; 0: no limit; the URL's own ?options=-c lock_timeout=… wins.")
    policy: Path = Field(DEFAULT_POLICY, description="The organisation's policy file; left at its default and with "
                         "no mappings/policy.yaml in the working directory, the copy the installed package carries.")
    mappings_dir: Path | None = Field(
        None, description="Folder of the mapping tables; default: the folder holding the policy's sibling tables "
        "(mappings/ of the project).")
    base_url: str | None = Field(
        None, description="Public base URL of the service (what /fhir, /dicomweb and /wado follow) used in "
        "Location headers and links; default: derived from the request.")
    max_upload_bytes: int = Field(
        50 * 1024 * 1024, gt=0, description="Largest accepted upload in bytes: a photo or an instance of a STOW-RS "
        "request (larger gets 413), a DICOM object received over C-STORE (0xA700 Out of Resources); a transaction Bundle may be "
        "a third larger (its Binary is base64).")
    http_header_timeout: float = Field(
        30.0, gt=0, le=3600, description="Seconds a request's header may take to arrive (for a connection's first "
        "request counted from its opening, for a later one from its first byte); a slower one is answered 408 and "
        "its connection closed.")
    http_body_timeout: float = Field(
        60.0, gt=0, le=3600, description="Seconds an upload may go without sending anything while its body is "
        "read (each wait, not the whole upload; a stalled one is answered 408, stores nothing and its "
        "connection is closed); also how long a client may read nothing of its answer, and how long the rest "
        "of a body answered unread (a refusal) may take, before the connection is closed; and how long requests "
        "under way get to finish at a stop (SIGTERM) before they are cancelled.")
    http_docs: bool = Field(
        False, description="Serve the interactive API page (Swagger UI) at /docs, for development: it loads its "
        "scripts from cdn.jsdelivr.net into the API's own origin, where a script can call the API as any caller "
        "(it does not authenticate); refused in production. /openapi.json is served either way.")
    http_body_min_rate: int = Field(
        1024, ge=1, le=1024 * 1024 * 1024, description="Bytes a second a request body must arrive at on average "
        "once its first ADAPTER_HTTP_BODY_TIMEOUT seconds of waiting are over (only the time spent waiting for the "
        "client counts); a slower one is answered 408, stores nothing and its connection is closed, so that bodies "
        "trickling a byte now and then cannot hold the connections for ever.")
    http_max_connections_per_address: int = Field(
        32, ge=1, le=100_000, description="HTTP connections one process holds at once from one IP address (an IPv6 "
        "client: from its /64); one more "
        "from that address is answered 503 on arrival and closed, so that one address cannot hold every connection "
        "(ADAPTER_HTTP_MAX_CONNECTIONS). A proxy of ADAPTER_TRUSTED_PROXIES, which carries every client's "
        "connections, is not bounded so; clients behind a NAT sharing one address may need more.")
    http_max_connections: int = Field(
        256, ge=1, le=100_000, description="HTTP connections one process holds open at once (each worker process "
        "of ADAPTER_HTTP_WORKERS its own), so that slow clients cannot take every file descriptor of the process "
        "(the DICOM SCP's among them). When one more arrives, the connection that needs its slot least is let go "
        "for it (one idle, else one whose header is still arriving, else the upload arriving slowest: answered "
        "503); only when every one has a request being answered is the newcomer answered 503 and closed. The start is refused "
        "when this and the DICOM SCP's connections do not fit the open-file limit.")
    min_free_mb: int = Field(
        128, ge=0, description="Free space (MiB) the data folder keeps for the database and the audit trail: "
        "an image that would leave less is refused (HTTP 507, DIMSE 0xA700), while reads, consent changes and "
        "their audit events go on; 0: no reserve.")
    pseudonym_key: str | None = Field(
        None, description="Secret key for the keyed pseudonyms of the HRESCH view; default: a random key "
        "generated once and kept in the data dir (pseudonym.key).")
    pseudonym_key_file: Path | None = Field(
        None, description="A file holding ADAPTER_PSEUDONYM_KEY (a container's secret, say, which `docker inspect` "
        "does not show as it shows the environment); its content, without surrounding white space, is the key. "
        "Not together with ADAPTER_PSEUDONYM_KEY.")
    accept_new_pseudonym_key: bool = Field(
        False, description="Start although the data dir's pseudonym.key is missing or another than the one the "
        "records were pseudonymised under (a restore that left it behind is refused): every patient gets new "
        "pseudonyms and mapped DICOM UIDs. Set once, deliberately.")
    environment: str = Field(
        "development", description="development or production; production refuses unsafe defaults.")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING, ERROR or CRITICAL (any case).")
    log_format: str = Field("text", description="text (one line a record) or json (one JSON object a line: "
                            "time, level, logger, message, exception; for a log collector).")

    # -- DICOM bridge ------------------------------------------------------------------------
    dicom_enabled: bool = Field(True, description="Run the DICOM SCP (C-ECHO, C-STORE) beside the HTTP API.")
    dicom_host: str = Field("127.0.0.1", description="Address the DICOM SCP listens on.")
    dicom_port: int = Field(11112, ge=0, le=65535, description="Port of the DICOM SCP.")
    ae_title: str = Field("ADAPTER", min_length=1, max_length=16, description="AE title of the adapter.")
    dicom_allowed_ae_titles: str = Field(
        "", description="Comma-separated calling AE titles allowed to associate (with the policy's "
        "allowedAETitles); empty in both: every caller is refused.")
    dicom_require_called_ae_title: bool = Field(
        False, description="Reject an association whose called AE title is not ADAPTER_AE_TITLE (A-ASSOCIATE-RJ "
        "reason 7); by default any called title is accepted, as a PACS may call the adapter by another title.")
    dicom_max_pdu: int = Field(4 * 1024 * 1024, ge=0, description="Maximum PDU size received (bytes; 0 = no limit).")
    dicom_acse_timeout: float = Field(
        5.0, gt=0, le=600, description="Seconds a connection to the DICOM SCP has to send its whole A-ASSOCIATE-RQ "
        "(the ARTIM timer, PS3.8 9.1.5, counted from the connection); a connection that has not is closed.")
    dicom_max_pending_per_address: int = Field(
        4, ge=1, le=1024, description="Connections to the DICOM SCP from one IP address that have not associated "
        "yet (no A-ASSOCIATE-RQ answered); one more from that address is closed on arrival, so that one address "
        "cannot hold every connection the SCP takes.")
    uid_root: str = Field("2.25", description="Org root for the DICOM UIDs the adapter creates "
                          "(2.25 = UUID-derived, PS3.5 B.2, when the organisation has no root of its own).")
    forward_to: str = Field("", description="Comma-separated C-STORE destinations AE@host:port; every new "
                            "photo is forwarded to each (the policy's forwardKinds can narrow that).")
    forward_retry_max: int = Field(300, ge=1, description="Attempts before an outbox item is marked failed "
                                   "(300: about a day, at one attempt every 5 minutes once backed off); "
                                   "POST /outbox/requeue puts failed items back.")

    trusted_proxies: str = Field(
        "", description="Comma-separated addresses or networks (10.0.0.5, 10.0.0.0/28, IPv6 too) of the reverse "
        "proxies whose X-Forwarded-For (and X-Forwarded-Proto) the adapter believes; empty: nobody's, the caller "
        "is its TCP peer. A forwarded address is recorded beside the proxy's, never instead of it.")

    stow_trusted_senders: str = Field(
        "", description="Comma-separated addresses or networks (10.0.0.5, 10.0.0.0/28, IPv6 too) of the DICOMweb "
        "clients trusted as the DICOM SCP's allowed AEs are: the organisation's PACS or modalities, which answer for "
        "the consent of what they send over STOW-RS. The client is the TCP peer, or the client a proxy of "
        "ADAPTER_TRUSTED_PROXIES forwards for. Empty: nobody; a clinical object from any other client needs a "
        "Consent on file permitting care, as a photo posted without a consent statement does.")

    allowed_hosts: str = Field(
        "", description="Comma-separated host[:port] names the HTTP API answers for besides ADAPTER_BASE_URL's host "
        "and the names of its listening address (the Host a reverse proxy forwards, e.g. adapter.hospital.example); "
        "a request naming another host gets 421. No wildcard.")

    cors_origins: str = Field(
        "", description="Comma-separated web origins (scheme://host[:port]) whose pages may call the API from a "
        "browser (CORS), e.g. a DICOMweb viewer; empty: none. '*' is refused.")

    @property
    def allowed_cors_origins(self) -> list[str]:
        """The CORS origins, each ``scheme://host[:port]``; ConfigurationError for anything else
        (a wildcard would let every web page a user opens read records through the browser)."""
        out = []
        for item in (o.strip().rstrip("/") for o in self.cors_origins.split(",")):
            if not item:
                continue
            scheme, sep, rest = item.partition("://")
            if scheme not in ("http", "https") or not sep or not rest or any(c in rest for c in "/?#*@ "):
                raise ConfigurationError(f"ADAPTER_CORS_ORIGINS: '{item[:60]}' is not an origin scheme://host[:port]")
            out.append(item)
        return out

    @property
    def allowed_host_authorities(self) -> list[Authority]:
        """The hosts of ADAPTER_ALLOWED_HOSTS (:func:`allowed_hosts_of`)."""
        return allowed_hosts_of(self.allowed_hosts)

    @property
    def trusted_proxy_networks(self) -> list[Network]:
        """The proxies of ADAPTER_TRUSTED_PROXIES, each an address (a /32 or /128) or a network;
        ConfigurationError for anything else: a host name (resolved when? to what?), a network
        with host bits set (10.0.0.1/8 would silently widen to 10.0.0.0/8), an IPv6 zone."""
        return [proxy_network(item) for item in (p.strip() for p in self.trusted_proxies.split(",")) if item]

    @property
    def stow_trusted_sender_networks(self) -> list[Network]:
        """The networks of ADAPTER_STOW_TRUSTED_SENDERS, each an address or a network
        (adapter.model.network.network_of: ConfigurationError for a host name, host bits set, a zone)."""
        return [stow_sender_network(item) for item in (p.strip() for p in self.stow_trusted_senders.split(","))
                if item]

    @property
    def allowed_ae_titles(self) -> list[str]:
        return [t.strip() for t in self.dicom_allowed_ae_titles.split(",") if t.strip()]

    @property
    def destinations(self) -> list[str]:
        out = []
        for item in (d.strip() for d in self.forward_to.split(",")):
            if not item:
                continue
            ae, sep, addr = item.partition("@")
            host, colon, port = addr.rpartition(":")
            if not sep or not ae or not colon or not host or not is_digits(port) or len(ae) > 16:
                raise ConfigurationError(f"ADAPTER_FORWARD_TO: '{item[:60]}' is not AE@host:port")
            out.append(item)
        return out

    @model_validator(mode="after")
    def _no_unknown_variable(self) -> Settings:
        """An ADAPTER_ variable that is no setting is refused, naming the setting it most
        resembles: a misspelt one (ADAPTER_DICOM_ALLOWED_AE_TITLE, ADAPTER_ENVIROMENT) was
        ignored, and the adapter ran on that setting's default. Names only, never values."""
        known = {f"ADAPTER_{name.upper()}" for name in type(self).model_fields} | INTERNAL_VARIABLES
        unknown = sorted(k for k in os.environ if k.upper().startswith("ADAPTER_") and k.upper() not in known)
        if unknown:
            said = []
            for name in unknown:
                close = difflib.get_close_matches(name.upper(), sorted(known - INTERNAL_VARIABLES), n=1, cutoff=0.75)
                said.append(f"{name} (did you mean {close[0]}?)" if close else name)
            # a ConfigurationError, not a ValueError: pydantic would render the settings, the key among them
            raise ConfigurationError(f"no setting of the adapter is named {', '.join(said)}: the settings are "
                                     "listed in the README (Settings); unset it or correct its name")
        return self

    @field_validator("data_dir")
    @classmethod
    def _data_dir_is_a_directory(cls, v: Path) -> Path:
        # at start and in every command, before anything is made in it: a regular file there was
        # found by the first file made under it ("…/audit.key cannot be read (FileExistsError)",
        # a traceback from serve), where the setting is what is wrong
        blocking = _not_a_directory(v)
        if blocking is not None:
            where = "" if blocking == v else ", in its path,"
            raise ConfigurationError(f"ADAPTER_DATA_DIR is not a directory: {blocking}{where} is a file, not a "
                                     "folder (name a folder, or one the adapter may create)")
        return v

    @field_validator("environment")
    @classmethod
    def _known_environment(cls, v: str) -> str:
        if v not in {"development", "production"}:
            raise ValueError("must be 'development' or 'production'")
        return v

    @field_validator("base_url")
    @classmethod
    def _absolute_http_url(cls, v: str | None) -> str | None:
        # "notaurl" was taken, and the CapabilityStatement's implementation.url said "notaurl/fhir"
        if v is None:
            return v
        scheme, sep, rest = v.partition("://")
        try:  # its host[:port] is admitted (adapter.api.allowed_hosts): no user information either
            parse_authority(rest.split("/", 1)[0])
        except ValueError:
            rest = ""
        if scheme not in ("http", "https") or not sep or not rest or rest.startswith("/") \
                or any(c in v for c in "?# "):
            raise ValueError("must be an absolute http(s) URL without query or fragment, e.g. "
                             "https://adapter.hospital.example")
        return v

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts_are_authorities(cls, v: str) -> str:
        # at start, and in `check` (a ConfigurationError, naming the setting)
        allowed_hosts_of(v)
        return v

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies_are_addresses(cls, v: str) -> str:
        # at start, and in `check`: not at the first request (a ConfigurationError, naming the setting)
        for item in (p.strip() for p in v.split(",")):
            if item:
                proxy_network(item)
        return v

    @field_validator("stow_trusted_senders")
    @classmethod
    def _stow_senders_are_addresses(cls, v: str) -> str:
        # at start, and in `check`, as ADAPTER_TRUSTED_PROXIES
        for item in (p.strip() for p in v.split(",")):
            if item:
                stow_sender_network(item)
        return v

    @field_validator("log_format")
    @classmethod
    def _known_log_format(cls, v: str) -> str:
        if v.lower() not in ("text", "json"):
            raise ValueError("must be text or json")
        return v.lower()

    @field_validator("log_level")
    @classmethod
    def _known_log_level(cls, v: str) -> str:
        # uvicorn's TRACE logs every request's scope (its query string: patient identifiers);
        # unknown names crashed the start with a traceback instead of saying which setting
        if v.upper() not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return v.upper()

    @model_validator(mode="after")
    def _key_from_its_file(self) -> Settings:
        """ADAPTER_PSEUDONYM_KEY read from ADAPTER_PSEUDONYM_KEY_FILE. A ConfigurationError, not a
        ValueError: pydantic would render the settings, the key among them, in its message."""
        if self.pseudonym_key_file is None:
            return self
        if self.pseudonym_key:
            raise ConfigurationError("set ADAPTER_PSEUDONYM_KEY or ADAPTER_PSEUDONYM_KEY_FILE, not both")
        try:
            key = self.pseudonym_key_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise ConfigurationError(f"ADAPTER_PSEUDONYM_KEY_FILE: {self.pseudonym_key_file} cannot be read "
                                     f"({reason})") from None
        if not key:
            raise ConfigurationError(f"ADAPTER_PSEUDONYM_KEY_FILE: {self.pseudonym_key_file} is empty")
        self.pseudonym_key = key
        return self

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'adapter.db').resolve()}"

    @property
    def resolved_policy(self) -> Path:
        """ADAPTER_POLICY; at its default (``mappings/policy.yaml``, relative to the working
        directory) and with no such file there, the installed package's copy (installed_policy),
        so the installed command runs from any directory. Else the path as given: a missing one
        is reported under its own name."""
        if self.policy == DEFAULT_POLICY and not DEFAULT_POLICY.is_file():
            return installed_policy() or self.policy
        return self.policy

    @property
    def policy_is_the_installed_example(self) -> bool:
        """Whether :attr:`resolved_policy` fell back to the package's example copy."""
        return self.resolved_policy != self.policy

    @property
    def policy_is_the_example(self) -> bool:
        """Whether the policy in force is a copy of the example the package carries
        (:func:`example_policies`): fallen back to, or named, as ``make run`` names the checkout's
        mappings/policy.yaml. Said in the log at start; refused in production only when fallen back
        to (:meth:`check_safe`): a file named is the operator's choice."""
        try:
            policy = self.resolved_policy.resolve()
            return any(policy == example.resolve() for example in example_policies())
        except OSError:
            return False

    @property
    def resolved_mappings_dir(self) -> Path:
        return self.mappings_dir if self.mappings_dir is not None else self.resolved_policy.resolve().parent

    @property
    def store(self) -> StoreOptions:
        return StoreOptions(database_url=self.resolved_database_url, data_dir=self.data_dir.resolve(),
                            min_free_bytes=self.min_free_mb * 1024 * 1024, timeouts=self.database_timeouts)

    @property
    def database_timeouts(self) -> DatabaseTimeouts:
        return DatabaseTimeouts(connect=self.database_connect_timeout, statement=self.database_statement_timeout,
                                lock=self.database_lock_timeout)

    @property
    def http(self) -> HttpOptions:
        return HttpOptions(host=self.http_host, port=self.http_port, max_upload_bytes=self.max_upload_bytes)

    def check_safe(self) -> None:
        """Refuse unsafe defaults outside development, and malformed lists at any time."""
        self.allowed_cors_origins  # noqa: B018 - raises ConfigurationError for a bad origin
        self.destinations  # noqa: B018 - raises ConfigurationError for a bad AE@host:port
        if self.environment == "production" and self.http_docs:
            # a third-party script on the API's origin reads and writes as any caller would
            raise ConfigurationError("ADAPTER_HTTP_DOCS is for development: the /docs page loads scripts from a "
                                     "public CDN into the API's origin; read /openapi.json with a viewer of your own")
        if self.environment == "production" and self.policy_is_the_installed_example:
            # the example policy (break-glass on, verbal consent enough) is no organisation's own
            raise ConfigurationError("ADAPTER_POLICY must name the organisation's policy in production: there is no "
                                     "mappings/policy.yaml in the working directory, and the example policy "
                                     "that comes with the package is not used there")
        if self.environment == "production" and not self.pseudonym_key:
            raise ConfigurationError(
                f"ADAPTER_PSEUDONYM_KEY (or ADAPTER_PSEUDONYM_KEY_FILE) must be set to a secret of at least "
                f"{MIN_PSEUDONYM_KEY_LENGTH} characters in production")
        short = self.short_pseudonym_key
        if self.environment == "production" and short is not None:
            raise ConfigurationError(f"{short} in production")

    @property
    def short_pseudonym_key(self) -> str | None:
        """What is wrong with a pseudonym key given shorter than production takes (its length, never
        the key), or None. Production refuses it (:meth:`check_safe`); development takes it and
        ``serve`` warns at start: a store pseudonymised under it cannot go to production without
        giving every patient new pseudonyms (newcomer review 5)."""
        if not self.pseudonym_key or len(self.pseudonym_key) >= MIN_PSEUDONYM_KEY_LENGTH:
            return None
        source = "ADAPTER_PSEUDONYM_KEY_FILE" if self.pseudonym_key_file else "ADAPTER_PSEUDONYM_KEY"
        return (f"the pseudonym key {source} gives is {len(self.pseudonym_key)} characters; at least "
                f"{MIN_PSEUDONYM_KEY_LENGTH} are needed")


def describe_invalid_settings(exc: ValidationError) -> str:
    """What is wrong with the settings, each named by its variable (``ADAPTER_LOG_FORMAT: must be
    text or json``), in the operator's words: not pydantic's report, which names the field
    (``log_format``), quotes the value (a key, a password in a URL) and links to its own site."""
    said = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = [str(part) for part in error.get("loc", ())]
        message = str(error.get("msg", "invalid"))
        message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
        said.append(f"ADAPTER_{loc[0].upper()}: {message}" if loc else message)
    return "; ".join(said)
