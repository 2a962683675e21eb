# Holds one established TCP connection across a checkpoint: sends half a request, sleeps, finishes it.
import socket, time, sys
s = socket.create_connection(("127.0.0.1", 8000))
s.sendall(b"GET /count HTTP/1.0\r\n")
time.sleep(float(sys.argv[1]))
s.sendall(b"\r\n")
data = b""
while True:
    d = s.recv(4096)
    if not d: break
    data += d
open("/srv/client.out", "w").write(data.decode(errors="replace"))
