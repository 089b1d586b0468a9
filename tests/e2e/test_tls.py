"""TLS on the HTTP and gRPC ports (rustls): tritonclient over HTTPS and gRPC with TLS, gRPC on the HTTP port over
TLS, mutual TLS with --tls-client-ca, a certificate reloaded on SIGHUP without a restart, and unusable files refused
at start. Certificates are made here with the openssl command-line tool."""
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from server import Server, binary


def openssl(*args, cwd):
    assert shutil.which("openssl"), "the openssl command is needed to make test certificates"
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(d, name):
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=d)


def make_cert(d, ca, name, server=True):
    """A certificate for `name` signed by `ca`; server ones name 127.0.0.1 and localhost."""
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", cwd=d)
    ext = os.path.join(d, f"{name}.ext")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n" if server
                else "extendedKeyUsage=clientAuth\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-days", "2", "-extfile", ext, "-out", f"{name}.pem", cwd=d)
    return os.path.join(d, f"{name}.pem"), os.path.join(d, f"{name}.key")


@pytest.fixture(scope="module")
def pki():
    d = tempfile.mkdtemp(prefix="ferroserve-tls-")
    make_ca(d, "ca")
    make_ca(d, "ca2")
    paths = {"dir": d, "ca": os.path.join(d, "ca.pem"), "ca2": os.path.join(d, "ca2.pem")}
    paths["server"] = make_cert(d, "ca", "server")
    paths["server2"] = make_cert(d, "ca2", "server2")
    paths["client"] = make_cert(d, "ca", "client", server=False)
    yield paths
    shutil.rmtree(d)


def https_get(addr, path, ca, client=None, timeout=5):
    context = ssl.create_default_context(cafile=ca)
    if client:
        context.load_cert_chain(*client)
    with urllib.request.urlopen(f"https://{addr}{path}", context=context, timeout=timeout) as r:
        return r.status, r.read()


def start(pki, *extra, cert="server"):
    cert_path, key_path = pki[cert]
    live = os.path.join(pki["dir"], "live")
    os.makedirs(live, exist_ok=True)
    shutil.copy(cert_path, os.path.join(live, "tls.crt"))
    shutil.copy(key_path, os.path.join(live, "tls.key"))
    s = Server("--tls-cert", os.path.join(live, "tls.crt"), "--tls-key", os.path.join(live, "tls.key"), *extra,
               wait_ready=False)
    client = extra and "--tls-client-ca" in extra and pki["client"] or None
    deadline = time.time() + 30
    while True:
        try:
            if https_get(s.http_addr, "/v2/health/ready", pki["ca"], client)[0] == 200:
                return s
        except Exception:
            if time.time() > deadline or s.proc.poll() is not None:
                raise RuntimeError(s.logs())
            time.sleep(0.1)


def mlp_grpc(addr, **ssl_args):
    client = grpcclient.InferenceServerClient(addr, ssl=True, **ssl_args)
    try:
        inp = grpcclient.InferInput("INPUT0", [2, 16], "FP32")
        inp.set_data_from_numpy(np.ones((2, 16), dtype=np.float32))
        return client.infer("mlp", [inp]).as_numpy("OUTPUT0").shape
    finally:
        client.close()


def test_https_and_grpc_with_tls_on_both_ports(pki):
    s = start(pki)
    try:
        client = httpclient.InferenceServerClient(s.http_addr, ssl=True, ssl_options={"ca_certs": pki["ca"]})
        inp = httpclient.InferInput("INPUT0", [2, 16], "FP32")
        inp.set_data_from_numpy(np.ones((2, 16), dtype=np.float32), binary_data=True)
        assert client.infer("mlp", [inp]).as_numpy("OUTPUT0").shape == (2, 4)
        assert client.is_server_ready()
        client.close()
        # gRPC with TLS on the gRPC port and on the HTTP port (ALPN h2).
        for addr in (s.grpc_addr, s.http_addr):
            assert mlp_grpc(addr, root_certificates=pki["ca"]) == (2, 4)
        # Plain HTTP to a TLS port is not served.
        with pytest.raises(Exception):
            urllib.request.urlopen(f"http://{s.http_addr}/v2/health/live", timeout=5)
        # A client that does not trust the issuer refuses the server.
        with pytest.raises((ssl.SSLError, urllib.error.URLError)):
            https_get(s.http_addr, "/v2/health/live", pki["ca2"])
    finally:
        assert s.stop() == 0, s.logs()


def test_mutual_tls_requires_a_client_certificate(pki):
    s = start(pki, "--tls-client-ca", pki["ca"])
    try:
        assert https_get(s.http_addr, "/v2/health/live", pki["ca"], pki["client"])[0] == 200
        with pytest.raises((ssl.SSLError, ConnectionError, urllib.error.URLError)):
            https_get(s.http_addr, "/v2/health/live", pki["ca"])
        cert, key = pki["client"]
        assert mlp_grpc(s.grpc_addr, root_certificates=pki["ca"], private_key=key, certificate_chain=cert) == (2, 4)
        with pytest.raises(InferenceServerException):
            mlp_grpc(s.grpc_addr, root_certificates=pki["ca"])
    finally:
        assert s.stop() == 0, s.logs()


def test_certificate_reloads_on_sighup(pki):
    s = start(pki)
    try:
        live = os.path.join(pki["dir"], "live")
        shutil.copy(pki["server2"][0], os.path.join(live, "tls.crt"))
        shutil.copy(pki["server2"][1], os.path.join(live, "tls.key"))
        s.proc.send_signal(signal.SIGHUP)
        deadline = time.time() + 10
        while True:
            try:
                assert https_get(s.http_addr, "/v2/health/live", pki["ca2"])[0] == 200
                break
            except (ssl.SSLError, urllib.error.URLError):
                assert time.time() < deadline, s.logs()
                time.sleep(0.1)
        with pytest.raises((ssl.SSLError, urllib.error.URLError)):
            https_get(s.http_addr, "/v2/health/live", pki["ca"])
        assert mlp_grpc(s.grpc_addr, root_certificates=pki["ca2"]) == (2, 4)
        # A broken file on reload keeps the certificate in force.
        with open(os.path.join(live, "tls.key"), "w") as f:
            f.write("not a key")
        s.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert https_get(s.http_addr, "/v2/health/live", pki["ca2"])[0] == 200
        assert "TLS reload failed" in s.logs()
        assert s.proc.poll() is None
    finally:
        assert s.stop() == 0, s.logs()


def test_unusable_tls_files_stop_the_start(pki):
    missing = os.path.join(pki["dir"], "missing.pem")
    for args, needle in (
        (["--tls-cert", missing, "--tls-key", pki["server"][1]], "certificate chain"),
        (["--tls-cert", pki["server"][0], "--tls-key", pki["server2"][1]], "TLS"),
        (["--tls-cert", pki["server"][0]], "--tls-key"),
    ):
        run = subprocess.run([binary(), "--model-repository", "models/repository", "--http_port", "0", "--grpc_port",
                              "0", *args], capture_output=True, text=True, timeout=60,
                             env=dict(os.environ, RUST_LOG="error"))
        assert run.returncode != 0, args
        assert needle in run.stderr, (args, run.stderr[-2000:])


def test_certificate_reloads_when_the_files_change(pki):
    """A renewed certificate written over the old files (a mounted Secret, cert-manager) is picked up without a
    signal, within the watch interval (5 s)."""
    s = start(pki)
    try:
        live = os.path.join(pki["dir"], "live")
        time.sleep(1.1)  # file times have one-second resolution on some filesystems
        shutil.copy(pki["server2"][1], os.path.join(live, "tls.key"))
        shutil.copy(pki["server2"][0], os.path.join(live, "tls.crt"))
        deadline = time.time() + 12
        while True:
            try:
                assert https_get(s.http_addr, "/v2/health/live", pki["ca2"])[0] == 200
                break
            except (ssl.SSLError, urllib.error.URLError):
                assert time.time() < deadline, s.logs()
                time.sleep(0.2)
        assert "the files changed" in s.logs()
    finally:
        assert s.stop() == 0, s.logs()
