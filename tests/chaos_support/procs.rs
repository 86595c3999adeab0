//! The services as processes for the chaos test, adapted from `tests/common/procs.rs`:
//! every process runs one snapshot of the `almanac` binary, copied when the test starts,
//! so a rebuild during a run of several minutes cannot mix two builds (or find the
//! binary missing while cargo relinks it) across restarts.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Copies the `almanac` binary cargo built for this test into `dir` (retrying for a few
/// seconds while a concurrent build relinks it).
pub fn snapshot_binary(dir: &Path) -> PathBuf {
    let built = env!("CARGO_BIN_EXE_almanac");
    let copy = dir.join("almanac-under-test");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match std::fs::copy(built, &copy) {
            Ok(_) => return copy,
            Err(e) if Instant::now() > deadline => panic!("cannot copy {built}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// A service process; killed when dropped so a failing test leaves nothing behind.
pub struct Proc {
    child: Child,
    /// The gRPC endpoint it printed, e.g. `http://127.0.0.1:41234`.
    pub url: String,
}

impl Proc {
    /// `almanac executor` on `listen` with its database in `dir`, allowing loopback
    /// egress (the sink lives there).
    pub fn executor(bin: &Path, dir: &Path, listen: &str) -> Proc {
        let db = dir.join("executor.db");
        let config = dir.join("executor.toml");
        std::fs::write(
            &config,
            "[egress]\nallow = [\"127.0.0.0/8\", \"::1/128\"]\n",
        )
        .expect("write the executor's configuration");
        spawn(
            bin,
            "executor",
            &[
                "executor",
                "--listen",
                listen,
                "--database",
                db.to_str().unwrap(),
                "--config",
                config.to_str().unwrap(),
            ],
            dir,
        )
    }

    /// `almanac scheduler` on any loopback port with its ledger in `dir`.
    pub fn scheduler(bin: &Path, dir: &Path, executor: &str) -> Proc {
        let db = dir.join("scheduler.db");
        spawn(
            bin,
            "scheduler",
            &[
                "scheduler",
                "--listen",
                "127.0.0.1:0",
                "--database",
                db.to_str().unwrap(),
                "--executor",
                executor,
            ],
            dir,
        )
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port in url")
    }

    /// SIGKILL, then reaps it: no shutdown, no flushing, like a crash.
    pub fn kill9(mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits (at most 30 s) for it to exit; returns its exit code, or
    /// `None` when it did not exit in time (it is then killed by `Drop`).
    pub fn terminate(mut self) -> Option<i32> {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(bin: &Path, name: &str, args: &[&str], dir: &Path) -> Proc {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))
        .expect("log file");
    let mut child = Command::new(bin)
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
    // The first stdout line says where it listens: "<name> listening on http://ADDR".
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        for _ in lines {}
    });
    let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "{name} did not report its address within 30 s; see {}/{name}.log",
            dir.display()
        );
    };
    let Some(url) = line.split_whitespace().find(|w| w.starts_with("http://")) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{name} printed {line:?}, not an address");
    };
    Proc {
        url: url.to_string(),
        child,
    }
}
