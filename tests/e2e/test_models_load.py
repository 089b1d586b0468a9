"""Repository behaviour: a bad model never takes the others down; the KServe single-model form."""
import os
import shutil
import tempfile
import urllib.error
import urllib.request

import numpy as np
import tritonclient.http as httpclient

from server import REPOSITORY, Server


def test_bad_model_does_not_affect_others():
    root = tempfile.mkdtemp()
    try:
        shutil.copytree(os.path.join(REPOSITORY, "mlp"), os.path.join(root, "mlp"))
        os.makedirs(os.path.join(root, "broken", "1"))
        with open(os.path.join(root, "broken", "1", "model.onnx"), "wb") as f:
            f.write(b"this is not an onnx file")
        os.makedirs(os.path.join(root, "badconfig", "1"))
        with open(os.path.join(root, "badconfig", "config.pbtxt"), "w") as f:
            f.write("max_batch_size: banana")
        s = Server(repository=root, wait_ready=False)
        try:
            client = httpclient.InferenceServerClient(s.http_addr)
            deadline = 100
            while not client.is_model_ready("mlp") and deadline:
                deadline -= 1
                import time
                time.sleep(0.1)
            assert client.is_model_ready("mlp")
            assert not client.is_model_ready("broken")
            assert not client.is_server_ready()  # strict readiness: every model must load
            inp = httpclient.InferInput("INPUT0", [1, 16], "FP32")
            inp.set_data_from_numpy(np.zeros((1, 16), dtype=np.float32))
            assert client.infer("mlp", [inp]).as_numpy("OUTPUT0").shape == (1, 4)
            try:
                urllib.request.urlopen(urllib.request.Request(
                    f"http://{s.http_addr}/v2/models/broken/infer", data=b"{\"inputs\": []}", method="POST"))
                raise AssertionError("expected an error")
            except urllib.error.HTTPError as e:
                assert e.code == 503
            index = client.get_model_repository_index()
            states = {m["name"]: m["state"] for m in index}
            assert states["broken"] == "UNAVAILABLE" and states["badconfig"] == "UNAVAILABLE"
            client.close()
        finally:
            assert s.stop() == 0
    finally:
        shutil.rmtree(root)


def test_kserve_single_model_dir():
    d = tempfile.mkdtemp()
    try:
        shutil.copy(os.path.join(REPOSITORY, "mlp", "1", "model.onnx"), os.path.join(d, "model.onnx"))
        s = Server("--model_name", "my-model", "--model_dir", d, repository=None)
        try:
            client = httpclient.InferenceServerClient(s.http_addr)
            assert client.is_model_ready("my-model")
            inp = httpclient.InferInput("INPUT0", [2, 16], "FP32")
            inp.set_data_from_numpy(np.ones((2, 16), dtype=np.float32))
            assert client.infer("my-model", [inp]).as_numpy("OUTPUT0").shape == (2, 4)
            client.close()
        finally:
            assert s.stop() == 0
    finally:
        shutil.rmtree(d)


def test_missing_onnxruntime_library_fails_clearly():
    import subprocess
    from server import binary

    out = subprocess.run([binary(), "--model-repository", REPOSITORY, "--onnxruntime-lib", "/nonexistent/libonnxruntime.so"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    assert "ONNX Runtime library not found" in out.stderr


def test_port_environment_variable_sets_the_http_port():
    import re
    import socket
    import subprocess
    from server import binary, onnxruntime_lib

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, PORT=str(port), ORT_DYLIB_PATH=onnxruntime_lib())
    proc = subprocess.Popen([binary(), "--host", "127.0.0.1", "--grpc_port", "0", "--model-repository", REPOSITORY],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    try:
        line = proc.stdout.readline()
        assert re.search(rf"http=127\.0\.0\.1:{port} ", line), line
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0


def test_repository_unload_and_load():
    s = Server("--model-control-mode", "explicit", "--load-model", "*")
    try:
        client = httpclient.InferenceServerClient(s.http_addr)
        client.unload_model("mlp")
        assert not client.is_model_ready("mlp")
        assert client.is_model_ready("strings")  # the other models stay up
        inp = httpclient.InferInput("INPUT0", [1, 16], "FP32")
        inp.set_data_from_numpy(np.zeros((1, 16), dtype=np.float32))
        try:
            client.infer("mlp", [inp])
            raise AssertionError("an unloaded model must not answer")
        except Exception as e:  # tritonclient raises InferenceServerException
            assert "unknown model" in str(e)
        client.load_model("mlp")
        assert client.is_model_ready("mlp")
        assert client.infer("mlp", [inp]).as_numpy("OUTPUT0").shape == (1, 4)
        try:
            client.load_model("not_a_model")
            raise AssertionError("loading a model outside the repository must fail")
        except Exception as e:
            assert "not in the model repository" in str(e)
        client.close()
    finally:
        assert s.stop() == 0
