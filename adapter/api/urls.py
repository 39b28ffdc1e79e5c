"""The adapter's own URLs: its links (Location, a Binary's URL, search pages) and the network
address its AuditEvents give. From ADAPTER_BASE_URL, else from the host the request was admitted
for (adapter.api.allowed_hosts), never from a ``Host`` header unchecked (security review finding 3)."""

from __future__ import annotations

from fastapi import Request

from adapter.api.allowed_hosts import admitted_host
from adapter.model.authority import host_literal
from adapter.services.registry import Services


def base(request: Request, services: Services) -> str:
    """The public base URL (ADAPTER_BASE_URL, else the admitted host's), no trailing slash."""
    settings = services.settings
    if settings.base_url:
        return settings.base_url.rstrip("/")
    host = admitted_host(request.scope) or f"{host_literal(settings.http_host)}:{settings.http_port}"
    scope = request.scope
    return f"{scope.get('scheme', 'http')}://{host}{scope.get('root_path', '')}".rstrip("/")


def absolute(request: Request, services: Services, path: str) -> str:
    return f"{base(request, services)}/{path.lstrip('/')}"
