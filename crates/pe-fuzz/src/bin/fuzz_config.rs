//! AFL++ target: [`pe_fuzz::config`] on each input.

fn main() {
    afl::fuzz!(|data: &[u8]| pe_fuzz::config(data));
}
