//! AFL++ target: [`pe_fuzz::image`] on each input.

fn main() {
    afl::fuzz!(|data: &[u8]| pe_fuzz::image(data));
}
