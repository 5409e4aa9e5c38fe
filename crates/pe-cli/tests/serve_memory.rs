//! `pe serve` hands memory back after a spike: one very large image (36 Mpx, a few hundred MB
//! decoded and resized) raises the process's peak; once the request is answered, its resident
//! memory must fall well below that peak instead of staying there (glibc keeps freed heap
//! unless told to trim, and `pe` keeps freed buffers on purpose for speed).

#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader, Cursor};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pe_testutil::fixtures;

/// `VmRSS` and `VmHWM` (peak) of a process, in MiB.
fn rss_and_peak(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> f64 {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap() / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Kills the server when the test ends, passing or not.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn memory_of_a_decode_spike_is_handed_back() {
    let Some(dir) = fixtures() else { return };
    let child = Command::new(env!("CARGO_BIN_EXE_pe"))
        .args(["serve", "--addr", "127.0.0.1:0", "--config"])
        .arg(dir.join("tiny-cls.json"))
        .arg("--weights")
        .arg(dir.join("tiny-cls.pt"))
        .env_remove("PE_MODEL")
        .env_remove("PE_API_KEY")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut server = Server(child);
    let pid = server.0.id();
    let mut stderr = BufReader::new(server.0.stderr.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "pe serve exited before listening");
        if let Some(url) = line.trim().split("http://").nth(1) {
            break url.to_string();
        }
    };
    // A 6000 x 6000 gradient: a small PNG, 108 MB of RGB once decoded.
    let img = image::RgbImage::from_fn(6000, 6000, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 7]));
    let mut png = Vec::new();
    img.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
    drop(img);
    let (before, _) = rss_and_peak(pid);

    let boundary = "pe-memory-test";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.png\"\r\nContent-Type: image/png\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(&png);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let resp = ureq::post(&format!("http://{addr}/embed/image"))
        .set("Content-Type", &format!("multipart/form-data; boundary={boundary}"))
        .timeout(Duration::from_secs(120))
        .send_bytes(&body)
        .unwrap();
    assert_eq!(resp.status(), 200);

    // The trim runs when the decode's reservation is released; give it a moment.
    let t = Instant::now();
    let (mut rss, mut peak) = rss_and_peak(pid);
    while peak - rss < 80.0 && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
        (rss, peak) = rss_and_peak(pid);
    }
    eprintln!("RSS before {before:.0} MiB, peak {peak:.0} MiB, after {rss:.0} MiB");
    assert!(peak - before >= 100.0, "the spike did not happen (peak {peak:.0} MiB, before {before:.0} MiB)");
    assert!(peak - rss >= 80.0, "memory stayed near the peak: {rss:.0} MiB resident, peak {peak:.0} MiB");
}
