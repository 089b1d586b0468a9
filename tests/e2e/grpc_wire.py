"""A raw HTTP/2 client (the `h2` package) for what gRPC client libraries cannot send: part of a message, then
nothing. Each `PartialCall` is one gRPC call on a connection of its own."""
import socket
import struct
import time

import h2.config
import h2.connection
import h2.events

INFER = "/inference.GRPCInferenceService/ModelInfer"
STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"


def framed(message_bytes, compressed=False):
    """One gRPC message on the wire: its flag, its length, its bytes."""
    return struct.pack(">BI", int(compressed), len(message_bytes)) + message_bytes


class PartialCall:
    def __init__(self, addr, path=INFER):
        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.stream = self.conn.get_next_available_stream_id()
        self.conn.send_headers(self.stream, [
            (":method", "POST"), (":scheme", "http"), (":authority", addr), (":path", path),
            ("content-type", "application/grpc"), ("te", "trailers"),
        ])
        self.flush()
        self.status = None
        self.closed = False
        self.received = b""

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def send_part_of_message(self, declared, sent, before=b""):
        """Sends `before` (whole messages), then a message's prefix declaring `declared` bytes and `sent` bytes of
        it, within flow control (the first frame carries `before` and the start of the message together)."""
        self.send(before + struct.pack(">BI", 0, declared) + bytes(sent))

    def send(self, pending):
        while pending:
            window = min(self.conn.local_flow_control_window(self.stream), self.conn.max_outbound_frame_size)
            if window <= 0:
                self.receive()
                if self.status is not None or self.closed:
                    return
                continue
            self.conn.send_data(self.stream, pending[:window])
            pending = pending[window:]
            self.flush()

    def receive(self, timeout=30):
        """Reads one batch of frames, noting the call's grpc-status and whether the connection closed."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed = True
            return
        for event in self.conn.receive_data(data):
            headers = getattr(event, "headers", None)
            if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)) and headers:
                found = {k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v
                         for k, v in headers}
                if "grpc-status" in found:
                    self.status = (int(found["grpc-status"]), found.get("grpc-message", ""))
            elif isinstance(event, h2.events.DataReceived):
                self.received += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamReset) and self.status is None:
                self.status = (None, f"reset {event.error_code}")
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.closed = True
        self.flush()

    def wait_status(self, timeout=30):
        """The call's (grpc-status, grpc-message), waiting at most `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while self.status is None and not self.closed and time.monotonic() < deadline:
            self.receive(max(0.01, deadline - time.monotonic()))
        return self.status

    def messages(self):
        """The messages received so far (each without its prefix)."""
        out, data = [], self.received
        while len(data) >= 5:
            _, length = struct.unpack(">BI", data[:5])
            out.append(data[5:5 + length])
            data = data[5 + length:]
        return out

    def close(self):
        self.sock.close()
