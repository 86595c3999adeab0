//! The egress guard against destinations that are NOT loopback, run where a broken guard
//! cannot send a packet anywhere: a network namespace whose only interface is loopback.
//! The outer test creates the namespace (root and `ip` needed), re-runs this test binary
//! inside it for the one ignored inner test, and deletes it on every exit path. Inside,
//! a guard bug would surface as "network unreachable"; the inner test asserts that every
//! error is the guard's refusal, with its reason, and that an allow-listed address added
//! to the namespace's loopback is reached.

mod call_api_target;
mod common;
mod egress_support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use almanac_executor::Config;
use almanac_proto::executor::v1::ExecutionStatus;
use call_api_target::Api;
use common::{Executor, call_once, execute_all, execute_request, finished};
use egress_support::{assert_refused, assert_refused_at_run_time, call};

/// Set in the environment of the inner run.
const IN_NETNS: &str = "ALMANAC_IN_NETNS";
/// The inner test, run only inside the namespace.
const INNER: &str =
    "in_a_loopback_only_namespace_special_destinations_are_refused_and_allowed_ones_reached";
/// The address the inner test adds to the namespace's loopback and allow-lists.
const ALLOWED: &str = "10.1.2.3";
/// How long the inner run may take.
const INNER_TIMEOUT: Duration = Duration::from_secs(300);

/// A namespace deleted when dropped, whatever happens to the test.
struct Netns {
    name: String,
}

impl Netns {
    fn create(name: String) -> Result<Self, String> {
        ip(&["netns", "add", &name])?;
        let ns = Self { name };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        ns.exec(&["ip", "addr", "add", &format!("{ALLOWED}/32"), "dev", "lo"])?;
        Ok(ns)
    }

    fn exec(&self, argv: &[&str]) -> Result<(), String> {
        let mut args = vec!["netns", "exec", &self.name];
        args.extend_from_slice(argv);
        ip(&args)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "delete", &self.name]) {
            eprintln!("could not delete network namespace {}: {e}", self.name);
        }
    }
}

/// Runs `ip` with `args` to completion (it does not block).
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether this process runs as root (the effective uid in /proc/self/status).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}

/// Skips (printing why) unless `ALMANAC_REQUIRE_TOOLS=1`, which makes it a failure.
fn skip(why: &str) {
    if std::env::var("ALMANAC_REQUIRE_TOOLS").is_ok_and(|v| v == "1") {
        panic!("the egress namespace test cannot run (ALMANAC_REQUIRE_TOOLS=1): {why}");
    }
    eprintln!("SKIPPED: the egress namespace test cannot run: {why}");
}

#[test]
fn non_loopback_destinations_are_refused_inside_a_loopback_only_namespace() {
    if !is_root() {
        return skip("it needs root to create a network namespace");
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return skip("`ip` (iproute2) is not installed");
    }
    let ns = match Netns::create(format!("almanac-egress-{}", std::process::id())) {
        Ok(ns) => ns,
        Err(e) => return skip(&e),
    };

    let out = tempfile::tempdir().unwrap();
    let (stdout, stderr) = (out.path().join("stdout"), out.path().join("stderr"));
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(&exe)
        .args([
            "--exact",
            INNER,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(IN_NETNS, "1")
        // A loopback-only namespace cannot reach the PostgreSQL test cluster, and this
        // test is about the egress guard, not storage: the inner run stays on SQLite.
        .env_remove("ALMANAC_TEST_BACKEND")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("run the test binary in the namespace");
    let deadline = Instant::now() + INNER_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the inner test did not finish within {INNER_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let (stdout, stderr) = (read(&stdout), read(&stderr));
    println!("--- inner run in {} ---\n{stdout}\n{stderr}", ns.name);
    assert!(status.success(), "the inner test failed: {status}");
    assert!(
        stdout.contains("test result: ok. 1 passed"),
        "the inner test did not run: {stdout}"
    );
}

/// Every destination here is refused by the guard's defaults, with its reason. None is
/// loopback, so the table only ever runs inside the namespace.
const REFUSED: &[(&str, &str)] = &[
    ("10.0.0.1", "private (10.0.0.0/8)"),
    ("10.255.255.254", "private (10.0.0.0/8)"),
    (
        "167772161",
        "egress to 10.0.0.1 refused: private (10.0.0.0/8)",
    ),
    (
        "012.0.0.1",
        "egress to 10.0.0.1 refused: private (10.0.0.0/8)",
    ),
    ("100.64.0.1", "shared address space (100.64.0.0/10)"),
    ("100.127.255.254", "shared address space (100.64.0.0/10)"),
    ("172.16.0.1", "private (172.16.0.0/12)"),
    ("172.31.255.254", "private (172.16.0.0/12)"),
    ("192.168.1.1", "private (192.168.0.0/16)"),
    ("169.254.169.254", "a cloud metadata address"),
    (
        "0xa9fea9fe",
        "egress to 169.254.169.254 refused: a cloud metadata address",
    ),
    ("100.100.100.200", "a cloud metadata address"),
    ("169.254.1.1", "link-local (169.254.0.0/16)"),
    ("0.1.2.3", "unspecified (\"this network\", 0.0.0.0/8)"),
    ("192.0.0.1", "IETF protocol assignments (192.0.0.0/24)"),
    ("192.0.2.1", "documentation (192.0.2.0/24)"),
    ("198.51.100.1", "documentation (198.51.100.0/24)"),
    ("203.0.113.1", "documentation (203.0.113.0/24)"),
    ("198.18.0.1", "benchmarking (198.18.0.0/15)"),
    ("192.88.99.1", "6to4 relay anycast (192.88.99.0/24)"),
    ("224.0.0.1", "multicast (224.0.0.0/4)"),
    ("239.255.255.250", "multicast (224.0.0.0/4)"),
    ("240.0.0.1", "reserved (240.0.0.0/4)"),
    ("255.255.255.255", "the broadcast address"),
    ("[fe80::1]", "link-local (fe80::/10)"),
    ("[fd00::1]", "unique-local (fc00::/7)"),
    ("[fc00::1]", "unique-local (fc00::/7)"),
    ("[fd00:ec2::254]", "a cloud metadata address"),
    ("[fec0::1]", "site-local (fec0::/10)"),
    ("[2001:db8::1]", "documentation (2001:db8::/32)"),
    ("[2001::1]", "Teredo"),
    ("[ff02::1]", "multicast (ff00::/8)"),
    ("[100::1]", "discard-only (100::/64)"),
    ("[4000::1]", "outside global unicast (2000::/3)"),
    ("[::]", "unspecified (::)"),
    (
        "[64:ff9b::7f00:1]",
        "NAT64 form of 127.0.0.1, which is loopback",
    ),
    (
        "[64:ff9b::a9fe:a9fe]",
        "NAT64 form of 169.254.169.254, which is a cloud metadata address",
    ),
    ("[64:ff9b:1::1]", "local-use NAT64 (64:ff9b:1::/48)"),
    (
        "[::ffff:10.0.0.1]",
        "IPv4-mapped form of 10.0.0.1, which is private",
    ),
    (
        "[::127.0.0.1]",
        "IPv4-compatible form of 127.0.0.1, which is loopback",
    ),
    (
        "[2002:7f00:1::1]",
        "6to4 form of 127.0.0.1, which is loopback",
    ),
    (
        "[2002:c0a8:101::1]",
        "6to4 form of 192.168.1.1, which is private",
    ),
];

#[tokio::test]
#[ignore = "runs only inside the network namespace its outer test creates"]
async fn in_a_loopback_only_namespace_special_destinations_are_refused_and_allowed_ones_reached() {
    assert_eq!(
        std::env::var(IN_NETNS).as_deref(),
        Ok("1"),
        "run by non_loopback_destinations_are_refused_inside_a_loopback_only_namespace"
    );
    // Nothing is sent before this holds: the only interface is loopback.
    let interfaces: Vec<String> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(interfaces, ["lo"], "not a loopback-only namespace");

    // The guard's defaults: every special destination refused.
    let dir = tempfile::tempdir().unwrap();
    let guarded = Executor::start_exact(Config::new(dir.path().join("guarded.db"))).await;
    let mut client = guarded.client().await;
    for (n, (host, reason)) in REFUSED.iter().enumerate() {
        let url = format!("http://{host}:8080/");
        assert_refused(&mut client, &format!("refused-{n}"), &url, reason).await;
    }
    println!(
        "{} special destinations refused with their reason",
        REFUSED.len()
    );

    // Allowed when allow-listed: a server on the namespace's 10.1.2.3 is reached; its
    // neighbour and its redirects to refused addresses are not.
    let listener = tokio::net::TcpListener::bind((ALLOWED, 0)).await.unwrap();
    let api = Api::serve(listener);
    let mut config = Config::new(dir.path().join("allowing.db"));
    config.actions.egress.allow = vec![
        format!("{ALLOWED}/32").parse().unwrap(),
        "198.51.100.0/24".parse().unwrap(),
    ];
    let allowing = Executor::start_exact(config).await;
    let mut client = allowing.client().await;
    let events = execute_all(
        &mut client,
        execute_request("allowed", call(&api.url("/echo/allowed"))),
    )
    .await;
    let done = finished(&events);
    assert_eq!(
        done.status,
        ExecutionStatus::Succeeded as i32,
        "{}",
        done.error
    );
    let seen = api.seen_on("/echo/allowed");
    assert_eq!(seen.len(), 1, "the allow-listed server was reached");
    assert_eq!(seen[0].headers["idempotency-key"], "allowed");

    let port = api.base.rsplit(':').next().unwrap().to_owned();
    assert_refused(
        &mut client,
        "neighbour",
        &format!("http://10.1.2.4:{port}/"),
        "egress to 10.1.2.4 refused: private (10.0.0.0/8)",
    )
    .await;
    for (n, (target, reason)) in [
        (
            "http://10.1.2.4:8080/",
            "egress to 10.1.2.4 refused: private",
        ),
        (
            "http://169.254.169.254/latest/meta-data/",
            "a cloud metadata address",
        ),
        (
            "http://[fd00::1]/",
            "egress to fd00::1 refused: unique-local",
        ),
    ]
    .iter()
    .enumerate()
    {
        let url = api.url(&format!("/to?url={target}"));
        let error =
            assert_refused_at_run_time(&mut client, &format!("hop-{n}"), &url, reason).await;
        assert!(error.starts_with("redirect to http://"), "{error}");
    }

    // The control: an allowed network with no route here fails as a network error (what
    // a broken guard would show), retryable and without the guard's words.
    let events = execute_all(
        &mut client,
        execute_request("no-route", call_once("http://198.51.100.1:8080/")),
    )
    .await;
    let done = finished(&events);
    assert_eq!(done.status, ExecutionStatus::Failed as i32);
    assert!(done.retryable, "{}", done.error);
    assert!(
        done.error.contains("could not connect") && !done.error.contains("refused:"),
        "{}",
        done.error
    );
    println!(
        "an allowed but unroutable destination fails with: {}",
        done.error
    );
    allowing.stop().await;
    guarded.stop().await;
}
