//! AFL++ target: [`pe_fuzz::request`] on each input.

fn main() {
    afl::fuzz!(|data: &[u8]| pe_fuzz::request(data));
}
