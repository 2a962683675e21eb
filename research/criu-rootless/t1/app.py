# Tiny HTTP server with in-memory state: /count increments a counter held only in memory.
import http.server, os, sys
STATE = {"hits": 0, "pid": os.getpid(), "blob": bytearray(os.urandom(1)) * (int(os.environ.get("BLOB_MB", "0")) << 20)}
class H(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/count":
            STATE["hits"] += 1
            body = f"hits={STATE['hits']} startpid={STATE['pid']} blob={len(STATE['blob'])}\n".encode()
            self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
        else:
            super().do_GET()
    def log_message(self, *a): pass
port = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
http.server.ThreadingHTTPServer(("0.0.0.0", port), H).serve_forever()
