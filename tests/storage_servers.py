"""Real storage servers on 127.0.0.1 for the object-storage tests: an S3-compatible server (moto_server from
PyPI), a static HTTP server, and a TCP proxy that cuts large responses short to inject download faults."""
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import http.server
import functools

BUCKET = "models"
KEY_ID, SECRET = "AKIDFERROSERVETEST", "ferroserve-secret-key-never-logged"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Moto:
    """moto_server on a port; its request log tells which objects were downloaded.

    Without a port, moto binds port 0 and the port is read from its "Running on" line: a port picked here and
    then bound by moto could be taken in between by a parallel test's listener (or by polling connects that
    connect a socket to itself), and the tests then talk to the wrong server."""

    def __init__(self, port=None):
        self.log = tempfile.NamedTemporaryFile(prefix="moto-", suffix=".log", delete=False)
        exe = os.path.join(os.path.dirname(sys.executable), "moto_server")
        self.proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port or 0)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.port = self._listening_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        import boto3

        self.s3 = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=KEY_ID,
                               aws_secret_access_key=SECRET, region_name="us-east-1")
        self.s3.create_bucket(Bucket=BUCKET)

    def upload_dir(self, local, prefix):
        for dirpath, _, files in os.walk(local):
            for name in files:
                path = os.path.join(dirpath, name)
                key = prefix + "/" + os.path.relpath(path, local).replace(os.sep, "/")
                self.s3.upload_file(path, BUCKET, key)

    def put(self, key, data):
        self.s3.put_object(Bucket=BUCKET, Key=key, Body=data)

    def delete_prefix(self, prefix):
        listed = self.s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
        for obj in listed:
            self.s3.delete_object(Bucket=BUCKET, Key=obj["Key"])

    def _listening_port(self, timeout=30.0):
        """The port from moto's (werkzeug's) "Running on http://127.0.0.1:PORT" line, printed once it listens."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            with open(self.log.name, errors="replace") as f:
                match = re.search(r"Running on http://127\.0\.0\.1:(\d+)", f.read())
            if match:
                return int(match.group(1))
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited ({self.proc.returncode}): {open(self.log.name).read()}")
            time.sleep(0.05)
        self.proc.kill()
        raise RuntimeError(f"moto_server not listening after {timeout}s: {open(self.log.name).read()}")

    def gets(self, suffix):
        """How many GETs of keys ending in `suffix` the server has answered so far."""
        with open(self.log.name, errors="replace") as f:
            return sum(1 for line in f if '"GET ' in line and suffix + " HTTP" in line)

    def env(self):
        return {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_ENDPOINT_URL": self.endpoint,
                "AWS_ALLOW_HTTP": "true", "AWS_REGION": "us-east-1"}

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


class StaticHttp:
    """Serves a directory over HTTP/1.1 with ETag-less static files (Python's http.server)."""

    def __init__(self, directory):
        handler = functools.partial(_QuietHandler, directory=directory)
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class CuttingProxy:
    """Forwards TCP to `upstream_port`; the first `cuts` responses larger than `min_bytes` are cut after
    `keep` bytes (the connection is dropped mid-body), as a flaky network would. With `corrupt`, those responses
    instead arrive whole with one byte flipped: the right length, the wrong bytes. The byte is the one at `keep`, or
    with `corrupt="moving"` one further along for each response (corruption on the way is not the same twice)."""

    def __init__(self, upstream_port, cuts=2, keep=64 * 1024, min_bytes=200 * 1024, corrupt=False):
        self.upstream_port, self.cuts, self.keep, self.min_bytes = upstream_port, cuts, keep, min_bytes
        self.corrupt = corrupt
        self.cut = 0
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client):
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
        self._pump(upstream, client, True)

    def _pump(self, src, dst, responses):
        relayed, cutting, target = 0, False, self.keep
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if responses and data.startswith(b"HTTP/1."):
                    # A new response on this (kept-alive) connection: cut it if it is large enough.
                    relayed, head = 0, data.split(b"\r\n\r\n")[0].lower()
                    if b"content-length:" in head:
                        length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
                        with self.lock:
                            if length >= self.min_bytes and self.cut < self.cuts:
                                self.cut += 1
                                cutting = True
                                target = self.keep + (self.cut if self.corrupt == "moving" else 0)
                if cutting and relayed + len(data) > target:
                    at = target - relayed
                    if not self.corrupt:
                        dst.sendall(data[:at])
                        break
                    data = data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]
                    cutting = False
                dst.sendall(data)
                relayed += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def stop(self):
        self.sock.close()
