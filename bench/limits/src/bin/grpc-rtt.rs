//! A bare gRPC round trip on loopback: `grpc.health.v1.Health/Check` against a running
//! server over one HTTP/2 connection (tonic, as the scheduler calls the executor), one
//! call at a time and with several in flight. A compiled client, so that the figure is
//! the server's and the loopback's rather than the client's.
//!
//! Usage: `grpc-rtt --endpoint http://127.0.0.1:PORT [--calls 20000] [--warmup 500]
//! [--concurrency 1,16]`; one JSON line per concurrency on stdout.

use std::time::Instant;

use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// /proc counts CPU time in USER_HZ ticks, which Linux fixes at 100 per second.
const USER_HZ: f64 = 100.0;

/// This process's user + system CPU seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / USER_HZ
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// `calls` sequential checks; the latency of each in microseconds.
async fn one_client(channel: Channel, calls: usize) -> Result<Vec<f64>, tonic::Status> {
    let mut client = HealthClient::new(channel);
    let mut latencies = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await?;
        latencies.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(latencies)
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoint = arg("--endpoint").ok_or("--endpoint http://127.0.0.1:PORT is required")?;
    let calls: usize = arg("--calls").map_or(Ok(20_000), |v| v.parse())?;
    let warmup: usize = arg("--warmup").map_or(Ok(500), |v| v.parse())?;
    let levels: Vec<usize> = arg("--concurrency")
        .unwrap_or_else(|| "1,16".into())
        .split(',')
        .map(|v| v.trim().parse())
        .collect::<Result<_, _>>()?;
    let channel = Endpoint::from_shared(endpoint.clone())?
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(10))
        .connect()
        .await?;
    one_client(channel.clone(), warmup).await?;
    for concurrency in levels {
        let concurrency = concurrency.max(1);
        let per_client = calls.div_ceil(concurrency);
        let (t, cpu0) = (Instant::now(), cpu_seconds());
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..concurrency {
            tasks.spawn(one_client(channel.clone(), per_client));
        }
        let mut latencies = Vec::with_capacity(per_client * concurrency);
        while let Some(done) = tasks.join_next().await {
            latencies.extend(done??);
        }
        let wall = t.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - cpu0;
        latencies.sort_by(f64::total_cmp);
        let n = latencies.len();
        println!(
            "{{\"endpoint\": \"{endpoint}\", \"concurrency\": {concurrency}, \"calls\": {n}, \
             \"calls_per_s\": {:.0}, \"p50_us\": {:.1}, \"p90_us\": {:.1}, \"p99_us\": {:.1}, \
             \"max_us\": {:.1}, \"client_cpu_us_per_call\": {:.2}}}",
            n as f64 / wall,
            percentile(&latencies, 50.0),
            percentile(&latencies, 90.0),
            percentile(&latencies, 99.0),
            latencies.last().copied().unwrap_or(0.0),
            cpu * 1e6 / n as f64
        );
    }
    Ok(())
}
