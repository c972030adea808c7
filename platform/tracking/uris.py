"""Credentials out of URIs before they are printed or stored.

A tracking or storage URI may carry a login (`postgresql://mlflow:PASSWORD@db/mlflow`,
`https://TOKEN@host/`) or a secret query parameter (`?password=...`, a presigned URL's signature). Such a
URI must still work where it is used, but `study.json`, logs and terminal output are read by others and
outlive the secret, so they get `redact(uri)`. Standard library only: it is imported where no MLflow or Ray
is loaded.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
# Query parameter names whose values are secrets: passwords, tokens, keys, signatures (AWS presigned URLs:
# X-Amz-Signature, X-Amz-Credential, X-Amz-Security-Token).
_SECRET_WORDS = "pass|pwd|secret|token|key|sig|credential|auth"
_SECRET_PARAM = re.compile(_SECRET_WORDS, re.IGNORECASE)


def redact(uri: str) -> str:
    """`uri` with its userinfo (`user:pass@`, or a token alone) and secret query values replaced by `***`;
    anything else, and a string that is no URI, comes back unchanged. The whole userinfo goes, not only the
    password: a single-part userinfo is often a token, and a user name is no one else's business."""
    try:
        parts = urlsplit(uri)
    except ValueError:  # e.g. a malformed IPv6 host: no safe way to tell the parts apart
        return _redact_unparsed(uri)
    netloc = parts.netloc
    if "@" in netloc:  # the host follows the *last* @: an unencoded @ may be inside the password
        netloc = f"{MASK}@{netloc.rpartition('@')[2]}"
    query = "&".join(_redact_param(pair) for pair in parts.query.split("&")) if parts.query else ""
    if (netloc, query) == (parts.netloc, parts.query):
        return uri  # untouched, byte for byte (urlunsplit would normalise e.g. an empty query `?`)
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _redact_param(pair: str) -> str:
    name, sep, value = pair.partition("=")
    return f"{name}={MASK}" if sep and value and _SECRET_PARAM.search(name) else pair


def _redact_unparsed(text: str) -> str:
    """Best effort for what urlsplit refuses: drop everything between `://` and the last `@` of the
    authority, and the values of secret-looking parameters."""
    text = re.sub(r"(://)[^/?#]*@", rf"\g<1>{MASK}@", text)
    return re.sub(rf"([?&][^=&#]*(?:{_SECRET_WORDS})[^=&#]*=)[^&#]+", rf"\g<1>{MASK}", text,
                  flags=re.IGNORECASE)
