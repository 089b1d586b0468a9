//! AFL++ driver for the `raw_tensor` target (see `ferroserve-fuzz`).

fn main() {
    afl::fuzz!(|data: &[u8]| ferroserve_fuzz::raw_tensor(data));
}
