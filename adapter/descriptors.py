"""The process's open-file limit and the connections that must fit in it (security review 4).

Every connection holds file descriptors: an HTTP one its socket and, while it uploads, the file
its body is staged in; a DICOM one its socket, the wake-up pipe of its receive path (two) and
the spool file of the object arriving. Under systemd's default soft limit (1,024) about 1,100
slow uploads took every descriptor, and the DICOM SCP could no longer take its PACS's
association. So at start the soft limit is raised to the hard one (what an unprivileged process
may do; ``LimitNOFILE=`` in a systemd unit, ``--ulimit nofile=`` for Docker, raise the hard one),
and the start is refused when the connections the settings allow cannot all be held at once.
"""

from __future__ import annotations

import resource

#: Descriptors per HTTP connection: the socket, and an upload's staged file.
PER_HTTP_CONNECTION = 2
#: Descriptors per DICOM connection: the socket, the wake-up pipe (two), a spool file.
PER_DICOM_CONNECTION = 4
#: What the process holds besides connections: the database, logs, libraries, blobs being read.
BASE = 128


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one; the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (OSError, ValueError):  # a sandbox refusing it: the soft limit stays
            pass
    return soft


def descriptors_needed(http_connections: int, dicom_connections: int, *, one_process: bool) -> int:
    """The descriptors a process needs to hold ``http_connections`` and ``dicom_connections`` at
    once; with several HTTP worker processes (``one_process`` False) each worker holds its HTTP
    connections and the first process the DICOM ones."""
    http = http_connections * PER_HTTP_CONNECTION
    dicom = dicom_connections * PER_DICOM_CONNECTION
    return BASE + (http + dicom if one_process else max(http, dicom))


def limit_problem(http_connections: int, dicom_connections: int, *, one_process: bool) -> str | None:
    """Why the open-file limit (raised first) cannot hold those connections, or None."""
    limit = raise_open_file_limit()
    needed = descriptors_needed(http_connections, dicom_connections, one_process=one_process)
    if limit == resource.RLIM_INFINITY or limit >= needed:
        return None
    return (f"the open-file limit ({limit}) is below the {needed} descriptors {http_connections} HTTP connections "
            f"(ADAPTER_HTTP_MAX_CONNECTIONS) and {dicom_connections} DICOM connections need: raise it (systemd "
            "LimitNOFILE=, docker --ulimit nofile=) or lower ADAPTER_HTTP_MAX_CONNECTIONS")


__all__ = ["descriptors_needed", "limit_problem", "raise_open_file_limit"]
