//! The egress guard on loopback, safely: every destination here is a loopback address in
//! some spelling, so even a broken guard could not send a packet off this machine. Each
//! is refused with its reason, at `Execute` (literal URLs, FAILED_PRECONDITION) and at
//! run time (a templated URL, a name, a redirect hop), and listeners on those addresses
//! that count accepted connections see none. Non-loopback destinations are in
//! `egress_netns.rs`, inside a network namespace.

mod call_api_target;
mod common;
mod egress_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use almanac_executor::Config;
use almanac_proto::executor::v1::ExecutionStatus;
use call_api_target::Api;
use common::{Executor, execute_all, execute_request, finished};
use egress_support::{assert_refused_at_execute, assert_refused_at_run_time, call, templated};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Accepts connections on a listener, counts them and answers 200, so that a request the
/// guard failed to stop would both be counted and look like a success.
fn count_connections(listener: TcpListener) -> Arc<AtomicUsize> {
    let count = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&count);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";
                let _ = socket.write_all(answer).await;
            });
        }
    });
    count
}

/// Counting listeners on 127.0.0.1, 127.0.0.2 and ::1, all on one port, so that every
/// spelling of a loopback address below would reach one of them.
struct Counters {
    port: u16,
    counts: Vec<(&'static str, Arc<AtomicUsize>)>,
}

impl Counters {
    async fn bind() -> Self {
        for _ in 0..50 {
            let v4 = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = v4.local_addr().unwrap().port();
            let (Ok(v4b), Ok(v6)) = (
                TcpListener::bind(("127.0.0.2", port)).await,
                TcpListener::bind(("::1", port)).await,
            ) else {
                continue;
            };
            return Self {
                port,
                counts: vec![
                    ("127.0.0.1", count_connections(v4)),
                    ("127.0.0.2", count_connections(v4b)),
                    ("::1", count_connections(v6)),
                ],
            };
        }
        panic!("no port free on 127.0.0.1, 127.0.0.2 and ::1 at once after 50 tries");
    }

    fn accepted(&self) -> Vec<(&'static str, usize)> {
        self.counts
            .iter()
            .map(|(a, c)| (*a, c.load(Ordering::SeqCst)))
            .collect()
    }

    fn assert_none(&self) {
        assert!(
            self.accepted().iter().all(|(_, n)| *n == 0),
            "a refused destination was connected to: {:?}",
            self.accepted()
        );
    }
}

#[tokio::test]
async fn loopback_in_every_spelling_is_refused_before_any_connection() {
    let dir = tempfile::tempdir().unwrap();
    let counters = Counters::bind().await;
    let port = counters.port;
    // The guard's defaults: nothing private is allowed, loopback included.
    let executor = Executor::start_exact(Config::new(dir.path().join("executor.db"))).await;
    let mut client = executor.client().await;

    let loopback = "egress to 127.0.0.1 refused: loopback (127.0.0.0/8)";
    let table = [
        ("127.0.0.1", loopback),
        ("2130706433", loopback),
        ("0x7f000001", loopback),
        ("0177.0.0.1", loopback),
        ("127.1", loopback),
        (
            "127.0.0.2",
            "egress to 127.0.0.2 refused: loopback (127.0.0.0/8)",
        ),
        ("[::1]", "egress to ::1 refused: loopback (::1)"),
        (
            "[::ffff:127.0.0.1]",
            "IPv4-mapped form of 127.0.0.1, which is loopback (127.0.0.0/8)",
        ),
        ("0.0.0.0", "egress to 0.0.0.0 refused: unspecified"),
    ];
    for (n, (host, reason)) in table.iter().enumerate() {
        let url = format!("http://{host}:{port}/");
        // A literal URL is refused at Execute, naming the field.
        assert_refused_at_execute(&mut client, &format!("literal-{n}"), &url, reason).await;

        // The same URL coming out of a template is refused when the run sends it.
        assert_refused_at_run_time(
            &mut client,
            &format!("templated-{n}"),
            &templated(&url),
            reason,
        )
        .await;
    }

    // A name resolving to loopback is refused when it is resolved, before connecting.
    assert_refused_at_run_time(
        &mut client,
        "localhost",
        &format!("http://localhost:{port}/"),
        "egress to localhost refused: it resolves only to refused addresses (127.0.0.1 is loopback",
    )
    .await;
    counters.assert_none();

    // The control: with loopback allowed, the same listeners do count a request.
    let allowed = tempfile::tempdir().unwrap();
    let open = Executor::start(&allowed.path().join("executor.db")).await;
    let mut open_client = open.client().await;
    let events = execute_all(
        &mut open_client,
        execute_request("control", call(&format!("http://127.0.0.1:{port}/"))),
    )
    .await;
    assert_eq!(finished(&events).status, ExecutionStatus::Succeeded as i32);
    assert_eq!(counters.accepted()[0], ("127.0.0.1", 1));
    open.stop().await;
    executor.stop().await;
}

#[tokio::test]
async fn an_allowed_server_redirecting_to_a_refused_address_is_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let counters = Counters::bind().await;
    let port = counters.port;
    // Only the first server's exact address is allowed; the other loopback addresses and
    // ::1 are not.
    let api = Api::start().await;
    let mut config = Config::new(dir.path().join("executor.db"));
    config.actions.egress.allow = vec!["127.0.0.1/32".parse().unwrap()];
    let executor = Executor::start_exact(config).await;
    let mut client = executor.client().await;

    let table = [
        (
            format!("http://[::1]:{port}/"),
            "egress to ::1 refused: loopback (::1)",
        ),
        (
            format!("http://127.0.0.2:{port}/"),
            "egress to 127.0.0.2 refused: loopback",
        ),
        (
            format!("http://2130706434:{port}/"),
            "egress to 127.0.0.2 refused: loopback",
        ),
        (
            format!("http://[::ffff:127.0.0.2]:{port}/"),
            "IPv4-mapped form of 127.0.0.2, which is loopback",
        ),
    ];
    for (n, (target, reason)) in table.iter().enumerate() {
        let url = api.url(&format!("/to?url={target}"));
        let error =
            assert_refused_at_run_time(&mut client, &format!("hop-{n}"), &url, reason).await;
        assert!(error.starts_with("redirect to http://"), "{error}");
    }
    assert_eq!(
        api.seen().len(),
        table.len(),
        "the allowed server was reached"
    );
    counters.assert_none();
    executor.stop().await;
}
