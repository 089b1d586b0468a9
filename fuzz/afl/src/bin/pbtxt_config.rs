//! AFL++ driver for the `pbtxt_config` target (see `ferroserve-fuzz`).

fn main() {
    afl::fuzz!(|data: &[u8]| ferroserve_fuzz::pbtxt_config(data));
}
