from __future__ import annotations

from fastapi import Request

from adapter.services.registry import Services


def base(request: Request, services: Services) -> str:
    """The public base URL (ADAPTER_BASE_URL, else derived from the request), no trailing slash."""
    if services.settings.base_url:
        return services.settings.base_url.rstrip("/")
    return str(request.base_url).rstrip("/")


def absolute(request: Request, services: Services, path: str) -> str:
    return f"{base(request, services)}/{path.lstrip('/')}"
