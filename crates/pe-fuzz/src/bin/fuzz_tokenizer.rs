//! AFL++ target: [`pe_fuzz::tokenizer`] on each input.

fn main() {
    afl::fuzz!(|data: &[u8]| pe_fuzz::tokenizer(data));
}
