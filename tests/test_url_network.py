"""Connections of URL-list fetches: which addresses are public, a connection goes to the
address that was checked (never a second lookup's), and one deadline ends a fetch however
slowly a server talks. Loopback servers only (127.0.0.1 and 127.0.0.2)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from core.sources import url_network
from core.sources.url_downloads import DownloadOptions, DownloadSummary, download_url_list
from core.sources.url_fetch import FetchRules
from core.sources.url_network import is_public_address
from tests.local_http import LocalHttpServer
from tests.url_list_files import picture, write_tsv
from tests.url_server import Route, UrlServer

JPEG = picture("red", "circle")


@pytest.fixture
def server() -> Iterator[UrlServer]:
    with UrlServer() as server:
        yield server


def fetch(tmp_path: Path, url: str, rules: FetchRules) -> DownloadSummary:
    listing = write_tsv(tmp_path / "list.tsv", [("a red circle", url)])
    return download_url_list(listing, tmp_path, DownloadOptions(rules, progress=False))


# Addresses


@pytest.mark.parametrize(
    "address",
    ["10.0.0.1", "169.254.169.254", "::1", "::ffff:127.0.0.1", "224.0.0.1", "127.0.0.1",
     "192.168.1.1", "100.64.0.1", "0.0.0.0", "::", "fe80::1%eth0", "fc00::1", "ff02::1",
     "2002:a00:1::", "64:ff9b::a00:1", "240.0.0.1", "not an address"],
)  # fmt: skip
def test_private_and_special_addresses_are_refused(address: str) -> None:
    assert not is_public_address(address)


@pytest.mark.parametrize(
    "address", ["93.184.216.34", "::ffff:93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"]
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert is_public_address(address)


# The connection goes to the address that was checked


class _Picture(BaseHTTPRequestHandler):
    """What a private service behind a rebinding name would answer."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(JPEG)))
        self.end_headers()
        self.wfile.write(JPEG)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("via_redirect", [False, True])
def test_a_rebinding_name_never_connects_to_its_second_address(
    tmp_path: Path, server: UrlServer, monkeypatch: pytest.MonkeyPatch, via_redirect: bool
) -> None:
    # rebind.test answers 127.0.0.1 (taken as public here) first and 127.0.0.2 (private)
    # on every later lookup: a request written to 127.0.0.2 is the attack, even if refused
    # afterwards.
    real_getaddrinfo = socket.getaddrinfo
    lookups: list[str] = []

    def rebinding(host: str, port: object, *args: object, **kwargs: object) -> object:
        if host == "rebind.test":
            lookups.append(host)
            host = "127.0.0.1" if len(lookups) == 1 else "127.0.0.2"
        return real_getaddrinfo(host, port, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    monkeypatch.setattr(url_network, "is_public_address", lambda address: address == "127.0.0.1")
    server.add("/r.jpg", Route(JPEG))
    url = f"http://rebind.test:{server.port}/r.jpg"
    if via_redirect:
        url = server.add("/hop", Route(status=302, headers={"Location": url}))
    with LocalHttpServer(_Picture, host="127.0.0.2", port=server.port) as private:
        summary = fetch(tmp_path, url, FetchRules())
    assert private.connections == 0
    assert summary.downloaded == 1 and server.requests["/r.jpg"] == 1
    assert lookups == ["rebind.test"]


def test_a_name_resolving_to_loopback_is_refused_before_connecting(
    tmp_path: Path, server: UrlServer
) -> None:
    url = f"http://pictures.test:{server.port}/r.jpg"
    server.add("/r.jpg", Route(JPEG))
    refused = fetch(tmp_path, url, FetchRules(resolver=lambda host, port: ["127.0.0.1"]))
    assert refused.failed == {"private address": 1} and server.connections == 0

    allowed = fetch(
        tmp_path, url, FetchRules(resolver=lambda h, p: ["127.0.0.1"], allow_private=True)
    )
    assert allowed.downloaded == 1 and server.connections == 1


def test_a_name_that_does_not_resolve_fails_as_such(tmp_path: Path) -> None:
    def nowhere(host: str, port: int) -> Sequence[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    summary = fetch(tmp_path, "http://nowhere.test/r.jpg", FetchRules(resolver=nowhere))
    assert summary.failed == {"DNS lookup failed": 1}


# One deadline per fetch


class _Drip(BaseHTTPRequestHandler):
    """Answers one byte every 0.2 s, for as long as the client listens: in the headers
    (path /headers) or in the body (any other path)."""

    def do_GET(self) -> None:
        head = b"HTTP/1.1 200 OK\r\nX-Drip: "
        if self.path != "/headers":
            head = b"HTTP/1.1 200 OK\r\n\r\n\xff\xd8\xff\xe0\x00\x10JFIF\x00"
        with contextlib.suppress(OSError):
            self.wfile.write(head)
            while not self.server.owner.closing.wait(0.2):  # type: ignore[attr-defined]
                self.wfile.write(b"a")

    def log_message(self, *args: object) -> None:
        pass


class DripServer(LocalHttpServer):
    def __init__(self) -> None:
        self.closing = threading.Event()
        super().__init__(_Drip)

    def __exit__(self, *exc: object) -> None:
        self.closing.set()
        super().__exit__(*exc)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("path", ["/headers", "/body"])
def test_a_dripping_server_fails_at_the_deadline(tmp_path: Path, path: str) -> None:
    rules = FetchRules(deadline_s=1.0, read_timeout_s=10.0, allow_private=True)
    with DripServer() as drip:
        summary = fetch(tmp_path, drip.url + path, rules)
    assert summary.failed == {"timeout": 1}


@pytest.mark.timeout(30)
def test_the_deadline_covers_every_redirect_hop(tmp_path: Path, server: UrlServer) -> None:
    # Each hop is well within the read timeout; all of them together are not.
    for hop in range(4):
        server.add(f"/{hop}", Route(status=302, headers={"Location": f"/{hop + 1}"}, delay_s=0.4))
    server.add("/4", Route(JPEG))
    rules = FetchRules(deadline_s=1.0, read_timeout_s=5.0, allow_private=True)
    summary = fetch(tmp_path, server.base + "/0", rules)
    assert summary.failed == {"timeout": 1} and server.requests["/4"] == 0


@pytest.mark.timeout(30)
def test_a_slow_lookup_ends_at_the_deadline(tmp_path: Path) -> None:
    def slow(host: str, port: int) -> Sequence[str]:
        time.sleep(3)
        return ["127.0.0.1"]

    rules = FetchRules(deadline_s=0.5, resolver=slow, allow_private=True)
    summary = fetch(tmp_path, "http://slow.test/r.jpg", rules)
    assert summary.failed == {"timeout": 1}


# TLS keeps the host name


def make_certificates(folder: Path, host: str) -> tuple[Path, Path, Path]:
    """A throwaway CA and a certificate it signed for `host`: (CA, certificate, key)."""
    ca, ca_key = folder / "ca.pem", folder / "ca.key"
    cert, key, csr, ext = (folder / n for n in ("cert.pem", "cert.key", "cert.csr", "ext.cnf"))
    ext.write_text(
        f"subjectAltName=DNS:{host}\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        "authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n"
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for command in (
        ["req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=test CA",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ["req", *ec, "-keyout", key, "-out", csr, "-subj", f"/CN={host}"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
         "-days", "2", "-extfile", ext],
    ):  # fmt: skip
        subprocess.run(["openssl", *map(str, command)], check=True, capture_output=True)
    return ca, cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls_names_the_host_while_connecting_to_the_checked_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca, cert, key = make_certificates(tmp_path, "pictures.test")
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    with UrlServer() as server:
        server.httpd.socket = tls.wrap_socket(server.httpd.socket, server_side=True)
        server.add("/r.jpg", Route(JPEG))
        rules = FetchRules(resolver=lambda host, port: ["127.0.0.1"], allow_private=True)
        right = fetch(tmp_path, f"https://pictures.test:{server.port}/r.jpg", rules)
        wrong = fetch(tmp_path, f"https://other.test:{server.port}/r.jpg", rules)
    assert right.downloaded == 1 and server.requests["/r.jpg"] == 1
    assert wrong.failed == {"connection failed": 1}  # the certificate is not other.test's
