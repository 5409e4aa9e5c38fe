//! AFL++ target: [`pe_fuzz::checkpoint`] on each input.

fn main() {
    afl::fuzz!(|data: &[u8]| pe_fuzz::checkpoint(data));
}
