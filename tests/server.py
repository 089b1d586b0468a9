"""Starts the real ferroserve binary on 127.0.0.1 with OS-chosen ports, for end-to-end tests."""
import atexit
import glob
import os
import re
import signal
import subprocess
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPOSITORY = os.path.join(ROOT, "models", "repository")
REFERENCE = os.path.join(ROOT, "models", "reference")


# Server logs live until this Python process exits (tests read them after `stop()`; failures print them), then
# are removed, unless FERROSERVE_KEEP_LOGS is set: a full run starts hundreds of servers.
_LOGS = []


@atexit.register
def _remove_logs():
    if os.environ.get("FERROSERVE_KEEP_LOGS"):
        return
    for path in _LOGS:
        try:
            os.unlink(path)
        except OSError:
            pass


def binary():
    return os.environ.get("FERROSERVE_BIN", os.path.join(ROOT, "target", "debug", "ferroserve"))


def onnxruntime_lib():
    if os.environ.get("ORT_DYLIB_PATH"):
        return os.environ["ORT_DYLIB_PATH"]
    import onnxruntime

    capi = os.path.join(os.path.dirname(onnxruntime.__file__), "capi")
    return sorted(glob.glob(os.path.join(capi, "libonnxruntime.so*")))[0]


class Server:
    """A running ferroserve process; `stop()` sends SIGTERM and waits."""

    def __init__(self, *args, repository=REPOSITORY, env=None, wait_ready=True):
        self.log = tempfile.NamedTemporaryFile(prefix="ferroserve-", suffix=".log", delete=False)
        _LOGS.append(self.log.name)
        cmd = [binary(), "--host", "127.0.0.1", "--http_port", "0", "--grpc_port", "0"]
        if repository is not None:
            cmd += ["--model-repository", repository]
        cmd += list(args)
        full_env = dict(os.environ, ORT_DYLIB_PATH=onnxruntime_lib(), RUST_LOG="info,ort=warn")
        full_env.pop("PORT", None)
        full_env.update(env or {})
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, env=full_env, text=True)
        line = self.proc.stdout.readline()
        self.listening = line
        match = re.search(r"http=(\S+) grpc=(\S+)", line)
        if not match:
            self.proc.kill()
            raise RuntimeError(f"server did not start: {line!r}\n{self.logs()}")
        self.http_addr, self.grpc_addr = match.group(1), match.group(2)
        self.http_url = f"http://{self.http_addr}"
        if wait_ready:
            self.wait_ready()

    def wait_ready(self, timeout=30.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(self.http_url + "/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except Exception:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}\n{self.logs()}")
            time.sleep(0.05)
        raise RuntimeError(f"server not ready after {timeout}s\n{self.logs()}")

    def logs(self):
        with open(self.log.name) as f:
            return f.read()

    def stop(self, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
