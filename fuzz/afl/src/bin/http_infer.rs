//! AFL++ driver for the `http_infer` target (see `ferroserve-fuzz`).

fn main() {
    afl::fuzz!(|data: &[u8]| ferroserve_fuzz::http_infer(data));
}
