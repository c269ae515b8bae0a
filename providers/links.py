"""Guards on what clients can make us request: next-page links and ids in URL paths.

Whatever an adapter requests carries the tenant's credentials, so a link (from an upstream
answer, or from a client through a cursor) is followed only as a page of the very list it
continues (``page_link``), and an id goes into a path only as one segment (``path_segment``).
"""

from __future__ import annotations

from urllib.parse import SplitResult, quote, urljoin, urlsplit

from providers.errors import InvalidCursor, UpstreamError, UpstreamNotFound
from providers.records import ProviderName

__all__ = [
    "page_link",
    "path_segment",
]


_DEFAULT_PORTS = {"http": 80, "https": 443}
_ENCODED_SEPARATORS = ("%2f", "%5c")  # "/" and "\\": a server may decode them into segments


def _has_dot_segment(path: str) -> bool:
    """Whether a segment of ``path`` is ``.`` or ``..``, raw or percent-encoded (``%2e``)."""
    return any(segment.lower().replace("%2e", ".") in (".", "..") for segment in path.split("/"))


def _unsafe_link(url: str) -> str | None:
    """Why ``url`` (absolute or relative) can never be a page link we follow, else None."""
    if not (url.isascii() and url.isprintable()) or " " in url:
        return "has whitespace, control or non-ASCII characters"
    if "\\" in url:
        return "has a backslash"
    if "#" in url:
        return "has a fragment"
    parts = urlsplit(url)
    if "@" in parts.netloc:
        return "has userinfo"
    lowered = parts.path.lower()
    if any(separator in lowered for separator in _ENCODED_SEPARATORS):
        return "has an encoded separator in its path"
    if _has_dot_segment(parts.path):
        return "has a dot segment in its path"
    return None


def _endpoint(parts: SplitResult) -> tuple[str, str, int] | None:
    """(scheme, host, port) with the scheme's default port filled in; None if malformed."""
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    try:
        port = parts.port
    except ValueError:
        return None
    return scheme, parts.hostname.lower(), port if port is not None else _DEFAULT_PORTS[scheme]


def page_link(
    base_url: str,
    list_path: str,
    url: str,
    provider: ProviderName,
    *,
    relative_to: str | None = None,
    error: type[UpstreamError] = InvalidCursor,
) -> str:
    """``url`` when it is another page of the list at ``base_url`` + ``list_path``, else ``error``.

    Next-page links reach us from upstream answers and, inside our cursors, from clients;
    whatever we follow gets the tenant's credentials. So a link is accepted only as a page of
    the very list it continues: same scheme, host and port as ``base_url``, and the path exactly
    ``base_url``'s path + ``list_path`` (``list_path`` already percent-encoded), with no ``.`` or
    ``..`` segments (raw or ``%2e``), encoded separators (``%2f``, ``%5c``), backslashes,
    userinfo, fragment, whitespace or non-ASCII anywhere — some server along the way might
    normalise those into another resource. Only the query may vary: the page cursor lives there.

    A client's cursor must be absolute (it is a link we handed out). An upstream's link may be
    relative: pass ``relative_to`` (the URL of the page it came with) to resolve it, after the
    checks, since resolving would remove the dot segments that show a link is crooked. Returns
    the URL to request, as given (resolved when relative)."""
    resolved, problem = _link_problem(base_url, list_path, url, relative_to)
    if problem is not None:
        raise error(provider, f"{provider.key} next-page link {problem}")
    return resolved


def _link_problem(
    base_url: str, list_path: str, url: str, relative_to: str | None
) -> tuple[str, str | None]:
    """(the URL to request, why it must not be requested or None); see ``page_link``."""
    if not isinstance(url, str) or not url:
        return "", "is empty"
    problem = _unsafe_link(url)
    if problem is not None:
        return url, problem
    resolved = url if relative_to is None else urljoin(relative_to, url)
    problem = _unsafe_link(resolved)
    if problem is not None:
        return resolved, problem
    parts = urlsplit(resolved)
    expected = urlsplit(base_url.rstrip("/") + "/" + list_path.lstrip("/"))
    endpoint = _endpoint(parts)
    if endpoint is None:
        return resolved, "is not an absolute http(s) URL"
    if endpoint != _endpoint(expected):
        return resolved, "points to another origin"
    if parts.path != expected.path:
        return resolved, "is not a page of this list"
    return resolved, None


def path_segment(value: str, provider: ProviderName, *, what: str = "organization") -> str:
    """``value`` (an id a client sent) as one percent-encoded URL path segment.

    Refused as ``UpstreamNotFound``, without asking the upstream, when it could not name one
    object there: empty or only dots (once in a URL, ``.`` and ``..`` would address the list or
    a parent path), or text that is not encodable as UTF-8 (a lone surrogate, which ``quote``
    cannot encode). Reserved characters are kept inside the segment by the encoding."""
    if not value or not value.strip("."):
        raise UpstreamNotFound(provider, f"{provider.key} has no {what} with that id")
    try:
        return quote(value, safe="")
    except UnicodeEncodeError:
        raise UpstreamNotFound(provider, f"{provider.key} has no {what} with that id") from None
