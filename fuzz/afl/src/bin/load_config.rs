//! AFL++ driver for the `load_config` target (see `ferroserve-fuzz`).

fn main() {
    afl::fuzz!(|data: &[u8]| ferroserve_fuzz::load_config(data));
}
