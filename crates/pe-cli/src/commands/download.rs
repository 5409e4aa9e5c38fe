//! `pe download`: fill the hub cache ahead of time (for offline use or a container image), and
//! the progress every download shows: a bar with bytes, rate and ETA on a terminal, a line every
//! few seconds off one (CI and container logs).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, HumanDuration, ProgressBar, ProgressStyle};
use perception_encoder::hub::{self, Progress};
use perception_encoder::ClipConfig;

/// Seconds between progress lines when stderr is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Download progress on stderr.
pub struct Reporter {
    bar: Option<ProgressBar>,
    file: String,
    total: u64,
    done: u64,
    resumed: u64,
    started: Instant,
    logged: Instant,
}

impl Reporter {
    /// A bar on a terminal, periodic lines otherwise.
    pub fn new() -> Self {
        let now = Instant::now();
        Reporter { bar: None, file: String::new(), total: 0, done: 0, resumed: 0, started: now, logged: now }
    }

    fn line(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = (self.done - self.resumed) as f64 / secs;
        let left = self.total.saturating_sub(self.done);
        let eta = if rate > 0.0 {
            HumanDuration(Duration::from_secs_f64(left as f64 / rate)).to_string()
        } else {
            "?".into()
        };
        let pct = if self.total > 0 { self.done as f64 * 100.0 / self.total as f64 } else { 100.0 };
        format!(
            "pe: downloading {}: {} of {} ({pct:.0}%), {}/s, about {eta} left",
            self.file,
            HumanBytes(self.done),
            HumanBytes(self.total),
            HumanBytes(rate as u64)
        )
    }
}

impl Progress for Reporter {
    fn start(&mut self, file: &str, total: u64, done: u64) {
        (self.file, self.total, self.done, self.resumed) = (file.to_string(), total, done, done);
        self.started = Instant::now();
        self.logged = self.started;
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template("{msg} {bar:30} {bytes}/{total_bytes} [{bytes_per_sec}, ETA {eta}]")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_message(format!("downloading {file}"));
            bar.set_position(done);
            self.bar = Some(bar);
        } else {
            let resumed = if done > 0 { format!(", resuming at {}", HumanBytes(done)) } else { String::new() };
            eprintln!("pe: downloading {file} ({}){resumed}", HumanBytes(total));
        }
    }

    fn advance(&mut self, bytes: u64) {
        self.done += bytes;
        match &self.bar {
            Some(bar) => bar.set_position(self.done),
            None if self.logged.elapsed() >= LOG_EVERY => {
                self.logged = Instant::now();
                eprintln!("{}", self.line());
            }
            None => {}
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        eprintln!(
            "pe: downloaded {} ({}) in {}",
            self.file,
            HumanBytes(self.total),
            HumanDuration(self.started.elapsed())
        );
    }
}

/// Arguments of `pe download`.
#[derive(Debug, clap::Args)]
pub struct DownloadCmd {
    /// Preset names (see `pe models`); their official checkpoints go to the hub cache.
    #[arg(required = true)]
    models: Vec<String>,
}

pub fn run(cmd: DownloadCmd) -> anyhow::Result<ExitCode> {
    // Every name is checked before anything is fetched.
    let configs = cmd.models.iter().map(|m| ClipConfig::preset(m)).collect::<Result<Vec<_>, _>>()?;
    let mut out = std::io::stdout().lock();
    for cfg in configs {
        let path = hub::fetch_checkpoint(&cfg.name, &mut Reporter::new())?;
        writeln!(out, "{}", path.display())?;
    }
    Ok(ExitCode::SUCCESS)
}
