"""``dinseg web`` lets in only whoever has its token: plain HTTP and websocket clients and chromium
on loopback, against a real server."""

from __future__ import annotations

import http.cookiejar
import os
import signal
import stat
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from test_web import CHROMIUM, ENV, MISSING, TOKEN, _free_port, needs_browser

needs_server = pytest.mark.skipif(any(name != "a chromium executable" for name in MISSING),
                                  reason=f"the web tests need {', '.join(MISSING)}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A server with a known token (from the environment), and the lines it printed at start."""
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "dinseg.apps.cli", "web", "--port", str(port), "--data",
                                str(tmp_path_factory.mktemp("data"))], env=ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if "serving" in line or process.poll() is not None:
            break
    try:
        yield f"http://127.0.0.1:{port}", "".join(lines)
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)


def _get(url, cookie=None):
    """(status, body, Set-Cookie headers) of a GET that follows redirects and keeps cookies."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    request = urllib.request.Request(url, headers={"Cookie": f"dinseg_token={cookie}"} if cookie else {})
    try:
        with opener.open(request, timeout=30) as answer:
            return answer.status, answer.read().decode(errors="replace"), jar
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace"), jar


def _one_changed(token: str) -> str:
    return token[:-1] + ("A" if token[-1] != "A" else "B")


@needs_server
def test_the_printed_address_works_and_sets_a_strict_http_only_cookie(server):
    url, printed = server
    assert f"{url}/?token={TOKEN}" in printed
    status, body, jar = _get(f"{url}/?token={TOKEN}")
    assert status == 200 and "<html" in body.lower()
    cookie = next(c for c in jar if c.name == "dinseg_token")
    assert cookie.value == TOKEN and cookie.path == "/"
    assert cookie.has_nonstandard_attr("HttpOnly") and cookie.get_nonstandard_attr("SameSite") == "Strict"
    status, body, _ = _get(f"{url}/index.html", cookie=TOKEN)  # the next visit: the cookie alone
    assert status == 200 and "<html" in body.lower()


@needs_server
@pytest.mark.parametrize("how", ["no token", "wrong token", "one character changed", "stale cookie",
                                 "empty token"])
def test_requests_without_the_token_get_403_and_nothing_of_the_page(server, how):
    url, _ = server
    target, cookie = {"no token": (f"{url}/", None), "wrong token": (f"{url}/?token=nope", None),
                      "one character changed": (f"{url}/?token={_one_changed(TOKEN)}", None),
                      "stale cookie": (f"{url}/index.html", _one_changed(TOKEN)),
                      "empty token": (f"{url}/?token=", "")}[how]
    for path in ("", "index.html", "js/trame.js"):
        status, body, jar = _get(target.replace("/index.html", f"/{path}") if path else target, cookie=cookie)
        assert status == 403 and "<html" not in body.lower() and "forbidden" in body, (how, path, status)
        assert not list(jar), "a refused request got a cookie"


@needs_server
@pytest.mark.parametrize("cookie, allowed", [(None, False), (_one_changed(TOKEN), False), (TOKEN, True)])
def test_a_websocket_needs_the_token_too(server, cookie, allowed):
    import asyncio

    import aiohttp

    url, _ = server

    async def connect():
        headers = {"Cookie": f"dinseg_token={cookie}"} if cookie else {}
        async with aiohttp.ClientSession() as session:
            try:
                async with session.ws_connect(url.replace("http", "ws") + "/ws", headers=headers):
                    return 101
            except aiohttp.WSServerHandshakeError as error:
                return error.status

    assert (asyncio.run(connect()) == 101) is allowed


@needs_browser
def test_chromium_opens_the_page_with_the_token_and_gets_403_without(server):
    from playwright.sync_api import sync_playwright

    url, _ = server
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        answer = page.goto(f"{url}/")
        assert answer.status == 403 and page.query_selector("#dinseg-load-sample") is None
        page.goto(f"{url}/?token={TOKEN}")
        page.wait_for_selector("#dinseg-load-sample", timeout=60000)
        page.goto(f"{url}/")  # the cookie lets the next visit in without the token in the address
        page.wait_for_selector("#dinseg-load-sample", timeout=60000)
        stranger = browser.new_context().new_page()
        assert stranger.goto(f"{url}/").status == 403
        browser.close()


@pytest.mark.parametrize("args, message", [
    (["--host", "0.0.0.0", "--no-token"], "--no-token serves the page to anyone"),
    (["--token", "short"], "at least 22 characters"),
    (["--token", "x" * 21 + "/"], "letters, digits"),
    (["--certfile", "cert.pem"], "both --certfile and --keyfile"),
])
def test_unsafe_or_bad_settings_are_refused_with_one_line(args, message, tmp_path):
    pytest.importorskip("trame_slicer")
    done = subprocess.run([sys.executable, "-m", "dinseg.apps.cli", "web", "--data", str(tmp_path), *args],
                          env={k: v for k, v in ENV.items() if k != "DINSEG_WEB_TOKEN"}, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and message in done.stderr, done.stderr


def test_the_upload_folder_is_the_server_users_only(tmp_path):
    from dinseg.apps.web.files import UploadArea

    uploads = UploadArea(1000, temp_root=str(tmp_path))
    try:
        assert stat.S_IMODE(os.stat(uploads.folder).st_mode) == 0o700
    finally:
        uploads.close()
    assert not uploads.folder.exists()


def test_tokens_are_long_random_and_compared_whole():
    from dinseg.apps.web.access import _matches, new_token

    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100 and min(len(t) for t in tokens) >= 43  # 256 bits in URL-safe base64
    token = new_token()
    assert _matches(token, token) and not _matches(_one_changed(token), token) and not _matches(token[:8], token)
    assert not _matches(None, token) and not _matches("", token)
