//! The services as real processes (`almanac scheduler` / `almanac executor`), for tests
//! whose claim is "survives a crash": they are killed with SIGKILL, not asked to stop.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A service process; killed when dropped so a failing test leaves nothing behind.
pub struct Proc {
    child: Child,
    /// The gRPC endpoint it printed, e.g. `http://127.0.0.1:41234`.
    pub url: String,
    pub name: String,
}

impl Proc {
    /// `almanac executor` on `listen` with its database in `dir`.
    pub fn executor(dir: &Path, listen: &str) -> Proc {
        let db = dir.join("executor.db");
        // The tests' targets live on loopback, which the egress guard refuses by default.
        let config = dir.join("executor.toml");
        std::fs::write(
            &config,
            "[egress]\nallow = [\"127.0.0.0/8\", \"::1/128\"]\n",
        )
        .expect("write the executor's configuration");
        spawn(
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

    /// `almanac scheduler` with its ledger in `dir`, sending to `executor`.
    pub fn scheduler(dir: &Path, executor: &str) -> Proc {
        let db = dir.join("scheduler.db");
        spawn(
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

    /// SIGKILL: no shutdown, no flushing, like a crash.
    pub fn kill9(mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for a clean exit; returns whether it exited 0 in time.
    pub fn terminate(mut self) -> bool {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        for _ in 0..300 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(name: &str, args: &[&str], dir: &Path) -> Proc {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))
        .expect("log file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_almanac"))
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("spawn almanac");
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
    let line = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(line) => line,
        Err(_) => {
            let _ = child.kill();
            panic!(
                "{name} did not report its address within 30 s; see {}/{name}.log",
                dir.display()
            );
        }
    };
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("{name} printed {line:?}, not an address"))
        .to_string();
    Proc {
        child,
        url,
        name: name.to_string(),
    }
}
