//! Running the real `almanac` binary in end-to-end tests: `almanac dev` on 127.0.0.1:0 with
//! its printed endpoints read back, and one-shot CLI commands run to their end with their
//! output in files (so no pipe fills up) and a deadline.

#![allow(dead_code)]

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_almanac");

/// A child process killed (and reaped) when dropped, whatever path the test takes.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Polls `child` until it exits or `deadline` passes.
pub fn wait_exit(child: &mut Child, deadline: Duration) -> Option<ExitStatus> {
    let until = Instant::now() + deadline;
    while Instant::now() < until {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// `almanac dev` running on 127.0.0.1:0, with the endpoints it printed.
pub struct Dev {
    pub process: Guard,
    pub scheduler: String,
    pub executor: String,
    log: PathBuf,
}

impl Dev {
    /// Starts `almanac dev` with its data in `data_dir` and its log in `log`, and waits
    /// (at most 60 s) for it to print both endpoints.
    pub fn start(data_dir: &Path, log: PathBuf) -> Dev {
        let child = Command::new(BIN)
            .args(["dev", "--data-dir"])
            .arg(data_dir)
            .args(["--scheduler-listen", "127.0.0.1:0"])
            .args(["--executor-listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&log).expect("create log file"))
            .spawn()
            .expect("spawn almanac dev");
        let mut process = Guard(child);
        let stdout = process.0.stdout.take().expect("stdout is piped");
        let (lines_tx, lines) = mpsc::channel();
        // Ends at EOF, i.e. when `dev` exits.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut dev = Dev {
            process,
            scheduler: String::new(),
            executor: String::new(),
            log,
        };
        let until = Instant::now() + Duration::from_secs(60);
        while dev.scheduler.is_empty() || dev.executor.is_empty() {
            let left = until.saturating_duration_since(Instant::now());
            let line = lines.recv_timeout(left).unwrap_or_else(|e| {
                panic!(
                    "almanac dev printed no endpoints ({e}); log:\n{}",
                    dev.log_text()
                )
            });
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some("scheduler"), Some(url)) => dev.scheduler = url.to_owned(),
                (Some("executor"), Some(url)) => dev.executor = url.to_owned(),
                _ => {}
            }
        }
        dev
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `almanac --scheduler S --executor E <args>` to its end (at most 60 s).
    pub fn almanac(&self, args: &[&str]) -> Run {
        let mut all = vec!["--scheduler", &self.scheduler, "--executor", &self.executor];
        all.extend_from_slice(args);
        run_almanac(&all, self.log.parent().expect("log has a folder"))
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- almanac dev log ---\n{}", self.log_text());
        }
    }
}

/// One finished `almanac` process.
pub struct Run {
    pub args: Vec<String>,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Asserts exit 0.
    pub fn ok(self) -> Run {
        assert!(self.status.success(), "{self}");
        self
    }

    /// Asserts this exit code.
    pub fn code(self, expected: i32) -> Run {
        assert_eq!(self.status.code(), Some(expected), "{self}");
        self
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "almanac {:?}: {}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.args, self.status, self.stdout, self.stderr
        )
    }
}

/// Runs the CLI with its output in files, killed after 60 s.
pub fn run_almanac(args: &[&str], scratch: &Path) -> Run {
    let out_path = scratch.join("cli.stdout");
    let err_path = scratch.join("cli.stderr");
    let child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("stdout file"))
        .stderr(File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("spawn almanac");
    let mut child = Guard(child);
    let status = wait_exit(&mut child.0, Duration::from_secs(60))
        .unwrap_or_else(|| panic!("almanac {args:?} did not finish within 60s"));
    Run {
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        status,
        stdout: std::fs::read_to_string(out_path).expect("read stdout"),
        stderr: std::fs::read_to_string(err_path).expect("read stderr"),
    }
}
