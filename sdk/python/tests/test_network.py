"""Tunnels through the relay (HTTPS with the relay's CA, connect tokens,
raw TCP), readiness, and network policy updates."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

import warren

from .conftest import wait_until

APP = r"""
import http.server, socket, threading
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        b = ("ud=" + str(self.headers.get("X-Warren-User-Data"))).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def log_message(self, *a):
        pass
def serve(c):
    with c:
        for d in iter(lambda: c.recv(65536), b""):
            c.sendall(d)
def echo():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 8002))
    s.listen()
    while True:
        threading.Thread(target=serve, args=(s.accept()[0],), daemon=True).start()
threading.Thread(target=echo, daemon=True).start()
s1 = http.server.ThreadingHTTPServer(("127.0.0.1", 8001), H)
threading.Thread(target=s1.serve_forever, daemon=True).start()
http.server.ThreadingHTTPServer(("127.0.0.1", 8000), H).serve_forever()
"""


@pytest.fixture(scope="module")
def app(client: warren.Client) -> Iterator[warren.Sandbox]:
    sb = warren.Sandbox.create(
        command=["python3", "-c", APP],
        encrypted_ports=[8000, {"port": 8001, "require_token": True}],
        unencrypted_ports=[8002],
        readiness_probe=8000,
        client=client,
    )
    try:
        sb.wait_ready(timeout=60)
        yield sb
    finally:
        sb.terminate()


def fetch(url: str, ca: ssl.SSLContext, headers: dict[str, str] | None = None) -> httpx.Response:
    """GET through a tunnel URL: *.localhost names go to loopback (the
    resolver here does not know them), with SNI and Host kept."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    dial_host, dial_port = warren.Endpoint(host, parts.port or 443).dial_address()
    target = parts._replace(netloc=f"{dial_host}:{dial_port}").geturl()
    with httpx.Client(verify=ca, timeout=20) as h:
        return h.get(
            target,
            headers={"Host": parts.netloc, **(headers or {})},
            extensions={"sni_hostname": host},
        )


def test_tunnels_https_and_tokens(app: warren.Sandbox) -> None:
    tunnels = app.tunnels()
    assert set(tunnels) == {8000, 8001, 8002}
    assert tunnels.relay_connected and tunnels.ca_fingerprint
    assert tunnels.ca_pem and "BEGIN CERTIFICATE" in tunnels.ca_pem
    ca = tunnels.ssl_context()
    open_port, token_port, raw = tunnels[8000], tunnels[8001], tunnels[8002]
    assert open_port.kind == "https" and open_port.url and open_port.url.startswith("https://")
    assert token_port.require_token and not open_port.require_token
    assert raw.kind == "tcp" and raw.raw is not None

    r = fetch(open_port.url, ca, {"X-Warren-User-Data": "spoofed"})
    assert (r.status_code, r.text) == (200, "ud=None")

    assert token_port.url
    r = fetch(token_port.url, ca)
    assert (r.status_code, r.headers.get("x-warren-error")) == (401, "token_required")
    tok = app.connect_token(8001, user_data="alice", ttl=600)
    assert tok.token and tok.port == 8001 and "_warren_token=" in tok.url
    r = fetch(token_port.url, ca, {"X-Warren-Connect-Token": tok.token})
    assert (r.status_code, r.text) == (200, "ud=alice")
    assert tok.token_id in [t.token_id for t in app.connect_tokens()]
    app.revoke_connect_token(tok.token_id)
    header = {"X-Warren-Connect-Token": tok.token}
    assert wait_until(15, lambda: fetch(token_port.url, ca, header).status_code == 403)
    listed = {t.token_id: t for t in app.connect_tokens()}
    assert listed[tok.token_id].revoked_at is not None
    with pytest.raises(warren.NetworkError) as e:
        app.connect_token(8002)
    assert e.value.code == "port_not_exposed"


def test_raw_tcp_tunnel(app: warren.Sandbox) -> None:
    raw = app.tunnels()[8002].raw
    assert raw is not None
    data = bytes(range(256)) * 500
    deadline = time.monotonic() + 15
    while True:  # the relay opens raw ports on its next route sync (~1 s)
        try:
            conn = socket.create_connection((raw.host, raw.port), timeout=20)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    with conn:
        conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
        back = b"".join(iter(lambda: conn.recv(65536), b""))
    assert back == data


def test_raw_ports_exhausted(app: warren.Sandbox, client: warren.Client) -> None:
    """The test server has one relay raw port, which ``app`` holds: a
    second sandbox asking for one gets ``capacity_exhausted``, live."""
    with pytest.raises(warren.CapacityExhausted) as e:
        warren.Sandbox.create(unencrypted_ports=[9000], timeout=30, client=client)
    assert e.value.code == "capacity_exhausted" and e.value.status == 503


def test_update_network(client: warren.Client) -> None:
    """This server runs with --no-network: sandboxes have no interface, so
    policy changes are refused with network_unavailable."""
    with warren.Sandbox.create(client=client, outbound_cidr_allowlist=["1.1.1.1/32"]) as sb:
        assert sb.info.network.outbound_cidr_allowlist == ["1.1.1.1/32"]
        with pytest.raises(warren.NetworkError) as e:
            sb.update_network(block_network=False, outbound_cidr_allowlist=None)
        assert e.value.code == "network_unavailable"
