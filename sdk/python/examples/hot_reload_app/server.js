// A tiny dev server with hot reload, the kind of app an agent writes:
// it serves index.html and tells every browser connected to /__reload
// (a WebSocket) which file changed. Node's standard library only.
const http = require("http");
const fs = require("fs");
const path = require("path");
const crypto = require("crypto");

const dir = __dirname;
const port = Number(process.env.PORT || 3000);
const sockets = new Set();

const server = http.createServer((req, res) => {
  const file = path.join(dir, "index.html");
  res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
  res.end(fs.readFileSync(file));
});

// The WebSocket handshake (RFC 6455) and unmasked server text frames.
server.on("upgrade", (req, socket) => {
  if (req.url !== "/__reload") return socket.destroy();
  const accept = crypto
    .createHash("sha1")
    .update(req.headers["sec-websocket-key"] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11")
    .digest("base64");
  socket.write(
    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n" +
      `Connection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`,
  );
  sockets.add(socket);
  socket.on("data", (frame) => {
    // A close frame (opcode 8) from the browser: answer it and hang up.
    if ((frame[0] & 0x0f) === 8) socket.end(Buffer.from([0x88, 0]));
  });
  socket.on("close", () => sockets.delete(socket));
  socket.on("error", () => sockets.delete(socket));
});

function broadcast(text) {
  const body = Buffer.from(text);
  const head = body.length < 126
    ? Buffer.from([0x81, body.length])
    : Buffer.from([0x81, 126, body.length >> 8, body.length & 0xff]);
  for (const socket of sockets) socket.write(Buffer.concat([head, body]));
}

// Writes through Warren's filesystem API are atomic (a temporary file,
// then a rename), so a change shows up as a rename to the final name.
fs.watch(dir, (event, name) => {
  if (name && /\.(html|css|js)$/.test(name) && !name.startsWith(".")) {
    broadcast(JSON.stringify({ reload: name }));
  }
});

server.listen(port, "0.0.0.0", () => console.log(`dev server on :${port}`));
