"""The AI-app-builder flow, end to end, in SDK calls.

An image with node; a sandbox with an HTTPS tunnel; the agent writes a web app
with hot reload; its dev server starts; a live edit arrives over the tunnel's
WebSocket; the result is snapshotted into an image; the sandbox ends.

    WARREN_URL=http://127.0.0.1:7070 WARREN_TOKEN=$(cat /var/lib/warren/admin-token) \
        python examples/app_builder.py --image node:22
"""

import argparse
import json
import pathlib
import socket
import time

from websockets.sync.client import connect

import warren

APP = pathlib.Path(__file__).parent / "hot_reload_app"
PORT = 3000


def open_reload_socket(tunnel: warren.Tunnel, tunnels: warren.Tunnels):
    """The browser's side of hot reload: a WebSocket through the tunnel."""
    host, port = tunnel.tls.host, tunnel.tls.port
    sock = socket.create_connection(tunnel.tls.dial_address(), timeout=10)
    url = f"wss://{host}:{port}/__reload"
    tls = tunnels.ssl_context()  # trusts Warren's CA
    return connect(url, sock=sock, ssl=tls, server_hostname=host, close_timeout=2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", default="node:22", help="an image with node")
    ap.add_argument("--no-network", action="store_true", help="build without network")
    args = ap.parse_args()

    # 1. Build (or reuse from the build cache) an image with node and /app.
    image = (
        warren.Image.from_registry(args.image)
        .run_commands("mkdir -p /app", "node --version > /app/.node-version")
        .workdir("/app")
        .build(tag="app-builder:base", network=not args.no_network)
    )
    print(f"image {image.id[:19]} ({args.image} + /app)")

    # 2. A sandbox with an HTTPS tunnel to the dev server's port.
    sb = warren.Sandbox.create(
        image=image,
        encrypted_ports=[PORT],
        readiness_probe=PORT,
        timeout=600,
        cpu=1,
        memory=1024,
        tags={"example": "app-builder"},
    )
    try:
        # 3. The agent writes the app through the filesystem API.
        for path in sorted(APP.iterdir()):
            sb.filesystem.write_text(f"/app/{path.name}", path.read_text())
        print("files:", ", ".join(e.path for e in sb.filesystem.list("/app")))

        # 4. Start the dev server in the background; wait until it listens.
        server = sb.exec_background("node", "/app/server.js", env={"PORT": str(PORT)})
        started = time.monotonic()
        sb.wait_ready(timeout=30)
        print(f"dev server ready in {time.monotonic() - started:.2f} s")

        # 5. The URL; then an edit, and the reload message over the WebSocket.
        tunnels = sb.tunnels()
        tunnel = tunnels[PORT]
        print("open", tunnel.url)
        with open_reload_socket(tunnel, tunnels) as ws:
            edited = time.monotonic()
            page = sb.filesystem.read_text("/app/index.html")
            sb.filesystem.write_text("/app/index.html", page.replace("Hello", "Hello again"))
            message = json.loads(ws.recv(timeout=10))
            print(f"hot reload: {message} after {(time.monotonic() - edited) * 1000:.0f} ms")

        # 6. Snapshot the app into an image new sandboxes can start from.
        snap = sb.snapshot_filesystem(name="app-builder:snapshot")
        print(f"snapshot {snap.id[:19]} in {snap.snapshot.took_ms:.0f} ms")
        print("dev server log:", server.output().decode().strip())
    finally:
        sb.terminate()
        print("terminated:", sb.termination.reason)


if __name__ == "__main__":
    main()
