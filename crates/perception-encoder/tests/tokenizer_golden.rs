//! The tokenizer against the reference's output for the 300 strings of
//! `tokenizer_golden.json`: cleaned text, BPE ids, decoded text, and rows at context 32 and 72.

mod common;

use common::{fixture, fixtures};
use perception_encoder::tokenizer::{clean, ClipTokenizer};

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

#[test]
fn golden_strings() {
    let Some(dir) = fixtures() else { return };
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(&dir, "tokenizer_golden.json")).unwrap()).unwrap();
    let cases = golden["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 300);
    let (t32, t72) = (ClipTokenizer::new(32), ClipTokenizer::new(72));
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let text = case["text"].as_str().unwrap();
        let mut problems = Vec::new();
        if clean(text) != case["clean"].as_str().unwrap() {
            problems.push(format!("clean {:?} != {:?}", clean(text), case["clean"].as_str().unwrap()));
        }
        let bpe = t32.encode(text);
        if bpe != ids(&case["bpe_ids"]) {
            problems.push(format!("bpe {:?} != {:?}", bpe, ids(&case["bpe_ids"])));
        }
        if t32.tokenize(text) != ids(&case["ids_32"]) {
            problems.push("ids_32 differ".into());
        }
        if t72.tokenize(text) != ids(&case["ids_72"]) {
            problems.push("ids_72 differ".into());
        }
        if t32.decode(&ids(&case["bpe_ids"])).unwrap() != case["decoded"].as_str().unwrap() {
            problems.push("decode differs".into());
        }
        if !problems.is_empty() {
            failures.push(format!("case {i} {text:?}: {}", problems.join("; ")));
        }
    }
    assert!(failures.is_empty(), "{} of 300 cases differ:\n{}", failures.len(), failures.join("\n"));
}
