"""Document Location (IHE MHD ITI-67, https://profiles.ihe.net/ITI/MHD/ITI-67.html#2367422111-document-location):
the attachment url of a record as a Document Consumer can retrieve it with [ITI-68].

A record stores its image's place as ``Binary/<id>``, relative to the FHIR base, so it does not
depend on the address the adapter is reached at (ADAPTER_BASE_URL may change, a restore may move
it). MHD asks the Document Responder for "a full URL that can be used by the Document Consumer to
retrieve the document": a consumer GETs ``content.attachment.url`` as it is given, and a relative
one resolves to nothing it can reach. So every answer that renders a record completes the url
against the base of the request (``<base>/fhir/Binary/<id>``); the stored resource keeps the
relative one.
"""

from __future__ import annotations

import re
from typing import Any

JSON = dict[str, Any]

#: The relative url a stored record holds (nothing else is rewritten: an absolute url, a
#: urn, a url of another resource type).
_RELATIVE_BINARY = re.compile(r"^Binary/[A-Za-z0-9\-.]{1,64}$")


def _absolute(attachment: Any, fhir_base: str) -> Any:
    if isinstance(attachment, dict):
        url = attachment.get("url")
        if isinstance(url, str) and _RELATIVE_BINARY.match(url):
            return {**attachment, "url": f"{fhir_base}/{url}"}
    return attachment


def with_document_location(resource: JSON, fhir_base: str) -> JSON:
    """``resource`` with the attachment url of a DocumentReference (``content[].attachment``)
    or a Media (``content``) completed against ``fhir_base`` (``https://host/fhir``, no
    trailing slash) when it is relative; any other resource as it is. A new dict: the caller's
    resource is not changed."""
    base = fhir_base.rstrip("/")
    rtype = resource.get("resourceType")
    if rtype == "DocumentReference" and isinstance(resource.get("content"), list):
        content = [{**c, "attachment": _absolute(c.get("attachment"), base)} if isinstance(c, dict) and "attachment" in c
                   else c for c in resource["content"]]
        return {**resource, "content": content}
    if rtype == "Media" and "content" in resource:
        return {**resource, "content": _absolute(resource["content"], base)}
    return resource


__all__ = ["with_document_location"]
