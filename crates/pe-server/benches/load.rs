//! Load benchmark for `pe serve`: the server on 127.0.0.1 with a random-weight model (default
//! PE-Core-B16-224), against the offline throughput of the same model in the same process.
//!
//! ```text
//! cargo bench -p pe-server --bench load -- [--model NAME] [--max-batch 8] [--clients 16]
//!     [--requests 160] [--mixed 120] [--queue 32] [--threads T] [--iters 5]
//! ```
//!
//! Phases: (1) `bench::run` at batch `--max-batch` (the offline `pe bench` figure);
//! (2) a mixed run: valid images, texts, OpenAI-style and invalid requests from `--clients`
//! clients, every answer checked; (3) a throughput run: single-image requests from `--clients`
//! clients, images/s against (1); (4) an overflow burst of `--queue` + 3 x `--clients`
//! simultaneous requests into a `--queue` slot queue (503 + Retry-After expected), then
//! (5) recovery: more requests at the normal client count, all answered correctly.
//! Needs the fixture images (`PE_FIXTURES`, default `../shared/fixtures`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use pe_server::{BatchConfig, ServerConfig};
use pe_testutil::load;
use perception_encoder::bench::{self, Tower};
use perception_encoder::{Clip, ClipConfig, LoadOptions};

struct Args {
    model: String,
    max_batch: usize,
    clients: usize,
    requests: usize,
    mixed: usize,
    queue: usize,
    threads: usize,
    iters: usize,
}

fn parse() -> Args {
    let mut a = Args {
        model: "PE-Core-B16-224".into(),
        max_batch: 8,
        clients: 0,
        requests: 160,
        mixed: 120,
        queue: 32,
        threads: perception_encoder::runtime::default_threads(),
        iters: 5,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--bench" {
            continue; // added by `cargo bench`
        }
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        let num = || value.parse::<usize>().unwrap_or_else(|_| panic!("{flag}: not a number: {value}"));
        match flag.as_str() {
            "--model" => a.model = value.clone(),
            "--max-batch" => a.max_batch = num(),
            "--clients" => a.clients = num(),
            "--requests" => a.requests = num(),
            "--mixed" => a.mixed = num(),
            "--queue" => a.queue = num(),
            "--threads" => a.threads = num(),
            "--iters" => a.iters = num(),
            other => panic!("unknown option {other}"),
        }
    }
    if a.clients == 0 {
        a.clients = 2 * a.max_batch;
    }
    a
}

fn main() {
    perception_encoder::runtime::keep_freed_memory();
    let a = parse();
    let Some(dir) = pe_testutil::fixtures() else {
        eprintln!("the load benchmark needs the fixture images");
        return;
    };
    let threads = perception_encoder::runtime::set_threads(a.threads);
    let cfg = ClipConfig::preset(&a.model).unwrap_or_else(|e| panic!("{e}"));
    let model = Clip::random(&cfg, 0, &LoadOptions::default()).unwrap();
    println!("{} (random weights), {threads} threads, max batch {}, {} clients", a.model, a.max_batch, a.clients);

    // (1) Offline.
    let offline = bench::run(&model, Tower::Image, a.max_batch, a.iters, threads).unwrap();
    println!(
        "offline encode_image at batch {}: {:.2} images/s ({:.0} ms per batch)",
        a.max_batch, offline.items_per_s, offline.ms_per_batch_median
    );

    let max_items = 16;
    let tol = 1e-4;
    let mixed = common::cases::mixed_cases(&model, &dir, tol, max_items);
    let images = common::cases::image_cases(&model, &dir, tol);
    let server_cfg = ServerConfig {
        batch: BatchConfig {
            max_batch: a.max_batch,
            max_text_batch: 64,
            max_wait: Duration::from_millis(5),
            queue_capacity: a.queue,
        },
        max_items,
        ..ServerConfig::default()
    };
    let base = common::serve(model, server_cfg);
    let mut ok = true;

    // (2) Mixed valid and invalid requests.
    let report = load::run(&base, &mixed, &load::schedule(&mixed, a.mixed, 0.2), a.clients, false);
    println!("mixed run, {} requests (20% invalid):\n{report}", a.mixed);
    ok &= report.all_correct();

    // (3) Throughput.
    let report = load::run(&base, &images, &load::schedule(&images, a.requests, 0.0), a.clients, false);
    let ratio = report.items_per_s() / offline.items_per_s;
    println!("throughput run, {} single-image requests:\n{report}", a.requests);
    println!(
        "server {:.2} images/s vs offline {:.2} images/s at batch {}: {:.1}% (target >= 90%)",
        report.items_per_s(),
        offline.items_per_s,
        a.max_batch,
        100.0 * ratio
    );
    ok &= report.all_correct();

    // (4) Overflow: a burst larger than the queue.
    let burst = a.queue + 3 * a.clients;
    let report = load::run(&base, &images, &load::schedule(&images, burst, 0.0), burst, true);
    println!("overflow burst, {burst} simultaneous requests into a {}-slot queue:\n{report}", a.queue);
    ok &= report.sent == report.received && report.wrong.is_empty() && report.transport_errors.is_empty();
    if report.refused == 0 {
        println!("  (the queue did not overflow)");
    }

    // (5) Recovery.
    let n = 4 * a.max_batch;
    let report = load::run(&base, &images, &load::schedule(&images, n, 0.0), a.clients, false);
    println!("after the burst, {n} requests:\n{report}");
    ok &= report.all_correct();

    let metrics = ureq::get(&format!("{base}/metrics")).call().unwrap().into_string().unwrap();
    let batches: Vec<&str> = metrics.lines().filter(|l| l.starts_with("pe_batch_size_")).collect();
    println!("server batch sizes: {}", batches.join(" | "));
    println!("peak RSS {:.0} MB", bench::peak_rss_mb());
    println!("{}", if ok { "PASS: no request lost, every answer correct" } else { "FAIL" });
    if !ok {
        std::process::exit(1);
    }
}
