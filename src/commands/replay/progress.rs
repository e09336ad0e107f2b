//! Progress of a long replay: a bar with rate and time left on a terminal (indicatif), plain
//! lines every few seconds otherwise (logs, CI), always on standard error.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

const LINE_EVERY: Duration = Duration::from_secs(5);

pub struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
    done: u64,
    unit: &'static str,
    started: Instant,
    last_line: Instant,
}

impl Progress {
    pub fn new(total: u64, unit: &'static str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template("{bar:40} {pos}/{len} {msg} ({per_sec}, {eta} left)")
                    .expect("a valid template"),
            );
            bar.set_message(unit);
            bar
        });
        Progress {
            bar,
            total,
            done: 0,
            unit,
            started: Instant::now(),
            last_line: Instant::now(),
        }
    }

    pub fn advance(&mut self, n: u64) {
        self.done += n;
        match &self.bar {
            Some(bar) => bar.inc(n),
            None if self.last_line.elapsed() >= LINE_EVERY => {
                self.last_line = Instant::now();
                eprintln!("replay: {}", self.line());
            }
            None => {}
        }
    }

    /// A line about something done, above the bar.
    pub fn note(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    fn line(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        format!(
            "{} of {} {} ({:.0}/s)",
            self.done,
            self.total,
            self.unit,
            self.done as f64 / secs
        )
    }

    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        eprintln!(
            "replay: {} in {:.1} s",
            self.line(),
            self.started.elapsed().as_secs_f64()
        );
    }
}
