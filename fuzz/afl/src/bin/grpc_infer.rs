//! AFL++ driver for the `grpc_infer` target (see `ferroserve-fuzz`).

fn main() {
    afl::fuzz!(|data: &[u8]| ferroserve_fuzz::grpc_infer(data));
}
