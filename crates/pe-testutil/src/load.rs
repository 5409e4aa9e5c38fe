//! A closed-loop HTTP load generator for `pe serve`: `clients` threads, each with its own
//! keep-alive connection, take the next request of a fixed schedule until it is used up, and
//! check every response against what its case expects. Used by the server's load test (CI
//! scale) and its load benchmark (`cargo bench -p pe-server --bench load`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

/// What a case's response must be.
#[derive(Debug, Clone)]
pub enum Expect {
    /// 200 with these embedding rows (`embeddings`, or OpenAI's `data[].embedding`), each
    /// value within `tol`.
    Rows { rows: Vec<Vec<f32>>, tol: f32 },
    /// This status with a JSON error whose message contains `needle`.
    Error { status: u16, needle: String },
}

/// One kind of request.
#[derive(Debug, Clone)]
pub struct Case {
    /// Short name for the report.
    pub name: String,
    /// Route, e.g. `/embed/image`.
    pub path: String,
    /// JSON body.
    pub body: Value,
    /// Images or texts embedded when it succeeds.
    pub items: usize,
    /// The expected response.
    pub expect: Expect,
}

impl Case {
    /// A request that must succeed with `rows`.
    pub fn valid(name: &str, path: &str, body: Value, rows: Vec<Vec<f32>>, tol: f32) -> Case {
        Case { name: name.into(), path: path.into(), items: rows.len(), body, expect: Expect::Rows { rows, tol } }
    }
    /// A request that must fail with `status` and a message containing `needle`.
    pub fn invalid(name: &str, path: &str, body: Value, status: u16, needle: &str) -> Case {
        Case {
            name: name.into(),
            path: path.into(),
            body,
            items: 0,
            expect: Expect::Error { status, needle: needle.into() },
        }
    }
    fn is_valid(&self) -> bool {
        matches!(self.expect, Expect::Rows { .. })
    }
}

/// What was sent and what came back.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Requests sent.
    pub sent: usize,
    /// Responses received (any status).
    pub received: usize,
    /// Requests that got no HTTP response (connection errors).
    pub transport_errors: Vec<String>,
    /// Responses by status code.
    pub by_status: BTreeMap<u16, usize>,
    /// 503 answers that carried `Retry-After` (only accepted when overload is allowed).
    pub refused: usize,
    /// Responses that were not what their case expects, with the reason.
    pub wrong: Vec<String>,
    /// Valid requests answered correctly.
    pub valid_ok: usize,
    /// Invalid requests answered with the expected error.
    pub invalid_ok: usize,
    /// Latency percentiles of correct valid answers, in milliseconds: p50, p95, p99, max.
    pub latency_ms: [f64; 4],
    /// Wall time of the run.
    pub wall_s: f64,
    /// Items embedded in correct answers.
    pub items: usize,
    /// Largest difference between a correct answer and its expected rows.
    pub max_diff: f32,
}

impl Report {
    /// Items embedded per second of wall time.
    pub fn items_per_s(&self) -> f64 {
        self.items as f64 / self.wall_s.max(1e-9)
    }
    /// Every request got a response, and every response was the expected one.
    pub fn all_correct(&self) -> bool {
        self.sent == self.received && self.transport_errors.is_empty() && self.wrong.is_empty()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let statuses: Vec<String> = self.by_status.iter().map(|(s, n)| format!("{s}: {n}")).collect();
        writeln!(f, "  requests sent {}, responses received {} ({})", self.sent, self.received, statuses.join(", "))?;
        writeln!(
            f,
            "  valid answered correctly {}, invalid refused as expected {}, refused with 503 {}, wrong {}, transport errors {}",
            self.valid_ok,
            self.invalid_ok,
            self.refused,
            self.wrong.len(),
            self.transport_errors.len()
        )?;
        let [p50, p95, p99, max] = self.latency_ms;
        writeln!(f, "  latency of valid requests: p50 {p50:.1} ms, p95 {p95:.1} ms, p99 {p99:.1} ms, max {max:.1} ms")?;
        writeln!(f, "  largest difference from the solo results: {:.2e}", self.max_diff)?;
        write!(f, "  {} items in {:.2} s: {:.2} items/s", self.items, self.wall_s, self.items_per_s())?;
        for w in self.wrong.iter().take(5) {
            write!(f, "\n  wrong: {w}")?;
        }
        for w in self.transport_errors.iter().take(5) {
            write!(f, "\n  transport error: {w}")?;
        }
        Ok(())
    }
}

/// `n` case indices: valid and invalid cases interleaved, cycling through each group, with
/// about `invalid_share` of them invalid (0.0 for none).
pub fn schedule(cases: &[Case], n: usize, invalid_share: f64) -> Vec<usize> {
    let valid: Vec<usize> = (0..cases.len()).filter(|&i| cases[i].is_valid()).collect();
    let invalid: Vec<usize> = (0..cases.len()).filter(|&i| !cases[i].is_valid()).collect();
    let (mut v, mut b) = (0, 0);
    (0..n)
        .map(|k| {
            let want_invalid = !invalid.is_empty()
                && (valid.is_empty() || ((k + 1) as f64 * invalid_share).floor() > (k as f64 * invalid_share).floor());
            if want_invalid {
                b += 1;
                invalid[(b - 1) % invalid.len()]
            } else {
                v += 1;
                valid[(v - 1) % valid.len()]
            }
        })
        .collect()
}

fn rows_of(v: &Value) -> Option<Vec<Vec<f32>>> {
    let to_row = |r: &Value| -> Option<Vec<f32>> {
        r.as_array()?.iter().map(|x| x.as_f64().map(|x| x as f32)).collect::<Option<Vec<f32>>>()
    };
    if let Some(e) = v.get("embeddings") {
        return e.as_array()?.iter().map(to_row).collect();
    }
    v.get("data")?.as_array()?.iter().map(|d| to_row(d.get("embedding")?)).collect()
}

fn check(case: &Case, status: u16, body: &Value) -> Result<f32, String> {
    match &case.expect {
        Expect::Rows { rows, tol } => {
            if status != 200 {
                return Err(format!("{}: status {status}, expected 200: {body}", case.name));
            }
            let got = rows_of(body).ok_or_else(|| format!("{}: no embeddings in {body}", case.name))?;
            if got.len() != rows.len() || got.iter().zip(rows).any(|(a, b)| a.len() != b.len()) {
                return Err(format!("{}: {} rows, expected {}", case.name, got.len(), rows.len()));
            }
            let err = got.iter().flatten().zip(rows.iter().flatten()).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            if err.is_nan() || err > *tol {
                return Err(format!("{}: max |difference| {err:e} above {tol:e}", case.name));
            }
            Ok(err)
        }
        Expect::Error { status: want, needle } => {
            let msg = body["error"]["message"].as_str().unwrap_or_default();
            if status != *want || !msg.contains(needle.as_str()) {
                return Err(format!("{}: status {status} message {msg:?}, expected {want} with {needle:?}", case.name));
            }
            Ok(0.0)
        }
    }
}

struct Outcome {
    case: usize,
    status: Option<u16>,
    latency: Duration,
    /// `Some(difference)` when answered as expected, `None` when refused with 503.
    verdict: Result<Option<f32>, String>,
}

/// Send `schedule` (indices into `cases`) to `base` from `clients` concurrent clients.
/// With `allow_overload`, a 503 carrying `Retry-After` is counted as refused instead of wrong.
pub fn run(base: &str, cases: &[Case], schedule: &[usize], clients: usize, allow_overload: bool) -> Report {
    let next = AtomicUsize::new(0);
    let outcomes = Mutex::new(Vec::with_capacity(schedule.len()));
    // Bodies are serialized once, outside the timed loop.
    let bodies: Vec<Vec<u8>> = cases.iter().map(|c| serde_json::to_vec(&c.body).expect("JSON body")).collect();
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..clients.max(1) {
            s.spawn(|| {
                let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(600)).build();
                let mut mine = Vec::new();
                loop {
                    let k = next.fetch_add(1, Ordering::SeqCst);
                    let Some(&ci) = schedule.get(k) else { break };
                    let case = &cases[ci];
                    let t = Instant::now();
                    let resp = agent
                        .post(&format!("{base}{}", case.path))
                        .set("Content-Type", "application/json")
                        .send_bytes(&bodies[ci]);
                    let (status, retry, body) = match resp {
                        Ok(r) => (r.status(), None, r.into_string()),
                        Err(ureq::Error::Status(code, r)) => {
                            let retry = r.header("retry-after").map(str::to_string);
                            (code, retry, r.into_string())
                        }
                        Err(e) => {
                            mine.push(Outcome {
                                case: ci,
                                status: None,
                                latency: t.elapsed(),
                                verdict: Err(format!("{}: {e}", case.name)),
                            });
                            continue;
                        }
                    };
                    let latency = t.elapsed();
                    let body: Value = body.ok().and_then(|b| serde_json::from_str(&b).ok()).unwrap_or(Value::Null);
                    let verdict = if allow_overload && status == 503 {
                        if retry.is_some() && body["error"]["type"] == "overloaded" {
                            Ok(None)
                        } else {
                            Err(format!("{}: 503 without Retry-After or error type: {body}", case.name))
                        }
                    } else {
                        check(case, status, &body).map(Some)
                    };
                    mine.push(Outcome { case: ci, status: Some(status), latency, verdict });
                }
                outcomes.lock().expect("outcomes").extend(mine);
            });
        }
    });
    let wall_s = started.elapsed().as_secs_f64();
    let outcomes = outcomes.into_inner().expect("outcomes");
    let mut report = Report { sent: next.load(Ordering::SeqCst).min(schedule.len()), wall_s, ..Report::default() };
    let mut latencies = Vec::new();
    for o in outcomes {
        let case = &cases[o.case];
        match o.status {
            None => {
                report.transport_errors.push(o.verdict.err().unwrap_or_default());
                continue;
            }
            Some(s) => {
                report.received += 1;
                *report.by_status.entry(s).or_default() += 1;
            }
        }
        match o.verdict {
            Ok(Some(diff)) if case.is_valid() => {
                report.valid_ok += 1;
                report.max_diff = report.max_diff.max(diff);
                report.items += case.items;
                latencies.push(o.latency.as_secs_f64() * 1e3);
            }
            Ok(Some(_)) => report.invalid_ok += 1,
            Ok(None) => report.refused += 1,
            Err(w) => report.wrong.push(w),
        }
    }
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return f64::NAN;
        }
        latencies[((p * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len()) - 1]
    };
    report.latency_ms = [pct(0.50), pct(0.95), pct(0.99), pct(1.0)];
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn schedule_mixes_in_the_asked_share() {
        let cases = vec![
            Case::valid("a", "/x", json!({}), vec![vec![0.0]], 0.0),
            Case::valid("b", "/x", json!({}), vec![vec![0.0]], 0.0),
            Case::invalid("c", "/x", json!({}), 400, ""),
        ];
        let s = schedule(&cases, 100, 0.25);
        assert_eq!(s.iter().filter(|&&i| i == 2).count(), 25);
        assert_eq!(s.iter().filter(|&&i| i == 0).count(), 38);
        assert_eq!(schedule(&cases, 10, 0.0), vec![0, 1, 0, 1, 0, 1, 0, 1, 0, 1]);
    }

    #[test]
    fn checks_rows_and_errors() {
        let c = Case::valid("v", "/x", json!({}), vec![vec![1.0, 2.0]], 1e-5);
        assert!(check(&c, 200, &json!({"embeddings": [[1.0, 2.0]]})).is_ok());
        assert!(check(&c, 200, &json!({"data": [{"embedding": [1.0, 2.0]}]})).is_ok());
        assert!(check(&c, 200, &json!({"embeddings": [[1.0, 2.1]]})).is_err());
        assert!(check(&c, 200, &json!({"embeddings": [[1.0]]})).is_err());
        assert!(check(&c, 400, &json!({"embeddings": [[1.0, 2.0]]})).is_err());
        let e = Case::invalid("e", "/x", json!({}), 400, "base64");
        assert!(check(&e, 400, &json!({"error": {"message": "invalid base64"}})).is_ok());
        assert!(check(&e, 413, &json!({"error": {"message": "invalid base64"}})).is_err());
        assert!(check(&e, 400, &json!({"error": {"message": "other"}})).is_err());
    }
}
