"""Who may open ``dinseg web``: a secret token, as Jupyter does.

The server makes a random token (256 bits from :mod:`secrets`) unless one is given, and prints the
page's address with it. Every HTTP request and websocket connection must carry it: in the URL
(``?token=...``, the first visit) or in the HttpOnly, SameSite=Strict cookie that visit sets. Tokens
are compared in constant time. A request without a valid one gets 403 and nothing of the page or
the data. What it does not do: encrypt the traffic (``--certfile/--keyfile`` serve HTTPS), or keep
out someone who can read the server user's files or processes.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Optional

#: the cookie that carries the token after the first visit
COOKIE = "dinseg_token"
#: a token given by the user must be at least this long (22 URL-safe characters carry 128 bits)
MINIMUM_TOKEN_LENGTH = 22
FORBIDDEN = "dinseg web: forbidden: open the address the server printed, with its token\n"


def new_token() -> str:
    """A random token of 256 bits, URL-safe."""
    return secrets.token_urlsafe(32)


def check_token(token: str) -> str:
    """A user-given token, if it is long enough and URL-safe; a ValueError says why not."""
    if len(token) < MINIMUM_TOKEN_LENGTH:
        raise ValueError(f"the token must have at least {MINIMUM_TOKEN_LENGTH} characters (128 bits), "
                         f"got {len(token)}")
    if not all(c.isalnum() or c in "-_" for c in token):
        raise ValueError("the token may hold letters, digits, '-' and '_' only (it travels in a URL)")
    return token


def _matches(given: Optional[str], token: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def token_middleware(token: str, secure: bool):
    """An aiohttp middleware that lets through requests with the token (URL or cookie) and answers
    403 otherwise; a request with the token in its URL gets the cookie (Secure when ``secure``)."""
    from aiohttp import web

    def remember(response) -> None:
        response.set_cookie(COOKIE, token, httponly=True, samesite="Strict", secure=secure, path="/")

    @web.middleware
    async def require_token(request, handler):
        in_url = _matches(request.query.get("token"), token)
        if not in_url and not _matches(request.cookies.get(COOKIE), token):
            return web.Response(status=403, text=FORBIDDEN, headers={"Cache-Control": "no-store"})
        try:
            response = await handler(request)
        except web.HTTPException as answer:  # a redirect (/ -> /index.html) is raised, not returned
            if in_url:
                remember(answer)
            raise
        if in_url and not getattr(response, "prepared", False):
            remember(response)
        return response

    return require_token
