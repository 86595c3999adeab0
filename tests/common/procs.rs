//! The services as real processes (`almanac scheduler` / `almanac executor`), for tests
//! whose claim is "survives a crash": they are killed with SIGKILL, not asked to stop.
//! A long test runs a snapshot of the binary (`snapshot_binary`), so that a rebuild
//! during its minutes cannot mix two builds across restarts.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A service process; killed when dropped so a failing test leaves nothing behind.
pub struct Proc {
    child: Child,
    /// The gRPC endpoint it printed, e.g. `http://127.0.0.1:41234`.
    pub url: String,
    pub name: String,
}

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

fn built() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_almanac"))
}

impl Proc {
    /// `almanac executor` on `listen` with its database in `dir`.
    pub fn executor(dir: &Path, listen: &str) -> Proc {
        Self::executor_of(built(), dir, listen)
    }

    /// `almanac scheduler` with its ledger in `dir`, sending to `executor`.
    pub fn scheduler(dir: &Path, executor: &str) -> Proc {
        Self::scheduler_of(built(), dir, executor)
    }

    /// `executor` run from the binary `bin`. Its replica id stays the same across
    /// restarts in `dir`: it resumes its executions at once.
    pub fn executor_of(bin: &Path, dir: &Path, listen: &str) -> Proc {
        Self::executor_replica(bin, dir, listen, "executor", &[])
    }

    /// One of several executors on the database of `dir`: replica `id` (its log is
    /// `<dir>/<id>.log`) on `listen`, with `extra` flags (e.g. `--lease-ttl`).
    pub fn executor_replica(
        bin: &Path,
        dir: &Path,
        listen: &str,
        id: &str,
        extra: &[&str],
    ) -> Proc {
        // The tests' targets live on loopback, which the egress guard refuses by default.
        let config = dir.join("executor.toml");
        std::fs::write(
            &config,
            "[egress]\nallow = [\"127.0.0.0/8\", \"::1/128\"]\n",
        )
        .expect("write the executor's configuration");
        let config = config.display().to_string();
        let mut args = vec![
            "executor",
            "--listen",
            listen,
            "--config",
            &config,
            "--replica-id",
            id,
        ];
        args.extend_from_slice(extra);
        spawn(bin, "executor", id, &args, dir)
    }

    /// `scheduler` run from the binary `bin`. Its replica id stays the same across
    /// restarts in `dir`, as a restarted pod's name does: it resumes its runs at once.
    pub fn scheduler_of(bin: &Path, dir: &Path, executor: &str) -> Proc {
        Self::scheduler_replica(bin, dir, executor, "scheduler", &[])
    }

    /// One of several schedulers on the database of `dir`: replica `id` (its log is
    /// `<dir>/<id>.log`), with `extra` flags (e.g. `--lease-ttl`).
    pub fn scheduler_replica(
        bin: &Path,
        dir: &Path,
        executor: &str,
        id: &str,
        extra: &[&str],
    ) -> Proc {
        let mut args = vec![
            "scheduler",
            "--listen",
            "127.0.0.1:0",
            "--executor",
            executor,
            "--replica-id",
            id,
        ];
        args.extend_from_slice(extra);
        spawn(bin, "scheduler", id, &args, dir)
    }

    /// The process id, for signals other than SIGKILL (SIGSTOP, SIGCONT).
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
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

/// Starts `bin` with `args` as a process of `service` (whose database in `dir` it uses),
/// logging to `<dir>/<name>.log`.
fn spawn(bin: &Path, service: &str, name: &str, args: &[&str], dir: &Path) -> Proc {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))
        .expect("log file");
    let mut child = Command::new(bin)
        .args(args)
        .args(super::database_flags(dir, service))
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
