//! Load test at CI scale: the fixtures' tiny model behind the server on 127.0.0.1, concurrent
//! clients sending a fixed mix of valid and invalid requests. Every request gets exactly one
//! response, every valid answer equals the model's solo result (itself checked against the
//! reference), every invalid one gets its 4xx, and the server's own counters agree.
//! `cargo bench -p pe-server --bench load` runs the same at benchmark scale with a B16.

mod common;

use std::time::Duration;

use pe_server::{BatchConfig, ServerConfig};
use pe_testutil::fixtures;
use pe_testutil::load;
use perception_encoder::{Clip, ClipConfig, LoadOptions};

#[test]
fn mixed_load_loses_nothing_and_every_answer_is_right() {
    let Some(dir) = fixtures() else { return };
    let cfg = ClipConfig::from_json_file(dir.join("tiny-cls.json")).unwrap();
    let model = Clip::load(&cfg, dir.join("tiny-cls.pt"), &LoadOptions::default()).unwrap();
    let max_items = 8;
    let cases = common::cases::mixed_cases(&model, &dir, 1e-5, max_items);

    // The solo answers the clients are held to are the reference's numbers.
    let bytes = std::fs::read(dir.join("tiny-cls.expected.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let reference: Vec<f32> = st
        .tensor("image_embed_norm_native")
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let dim = reference.len() / 2;
    for (name, row) in [("image cat.png", &reference[..dim]), ("image dog.png", &reference[dim..])] {
        let case = cases.iter().find(|c| c.name == name).unwrap();
        let load::Expect::Rows { rows, .. } = &case.expect else { unreachable!() };
        let err = rows[0].iter().zip(row).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(err <= 1e-5, "{name}: solo result off the reference by {err:e}");
    }

    let server_cfg = ServerConfig {
        batch: BatchConfig {
            max_batch: 8,
            max_text_batch: 32,
            max_wait: Duration::from_millis(2),
            queue_capacity: 256,
        },
        max_items,
        ..ServerConfig::default()
    };
    let base = common::serve(model, server_cfg);
    let n = 300;
    let schedule = load::schedule(&cases, n, 0.3);
    let report = load::run(&base, &cases, &schedule, 8, false);
    eprintln!("tiny-cls, 8 clients, {n} requests (30% invalid):\n{report}");
    assert!(report.all_correct(), "{report}");
    assert_eq!((report.sent, report.received), (n, n));
    assert_eq!(report.valid_ok + report.invalid_ok, n);
    assert_eq!(
        report.invalid_ok,
        schedule.iter().filter(|&&i| matches!(cases[i].expect, load::Expect::Error { .. })).count()
    );

    // The server counted exactly the requests sent.
    let metrics = common::metrics(&base);
    let counted: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("pe_requests_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(counted as usize, n, "{metrics}");
    assert_eq!(common::metric(&metrics, "pe_queue_depth"), Some(0.0), "{metrics}");
}
