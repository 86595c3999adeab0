//! The channel to the executors. `http://host:port` is one HTTP/2 connection (tonic
//! reconnects by itself). `dns:///name:port` — the gRPC naming convention, for a headless
//! Kubernetes Service — is a balanced channel over every address the name resolves to,
//! re-resolved every few seconds, because tonic resolves a name once per connection and
//! would never learn of executors added or removed later.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint};

/// How often a `dns:///` name is resolved again.
const RESOLVE_EVERY: Duration = Duration::from_secs(5);

/// Why an executor URL cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
    #[error("a dns:/// target needs a host and a port (dns:///executor:50052)")]
    DnsTarget,
}

/// A lazily connecting channel to the executor(s) at `target`.
pub fn channel(target: &str) -> Result<Channel, EndpointError> {
    let Some(name) = target.strip_prefix("dns:///") else {
        return Ok(configure(Endpoint::from_shared(target.to_string())?).connect_lazy());
    };
    let (host, port) = name.rsplit_once(':').ok_or(EndpointError::DnsTarget)?;
    let port: u16 = port.parse().map_err(|_| EndpointError::DnsTarget)?;
    if host.is_empty() {
        return Err(EndpointError::DnsTarget);
    }
    // Checked once here, so the resolver's per-address endpoints cannot fail to parse.
    Endpoint::from_shared(format!("http://{name}"))?;
    let (channel, changes) = Channel::balance_channel::<SocketAddr>(64);
    tokio::spawn(resolve_forever(host.to_owned(), port, changes));
    Ok(channel)
}

/// The settings every executor connection shares.
fn configure(endpoint: Endpoint) -> Endpoint {
    endpoint
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
}

/// Keeps the balanced channel's endpoints equal to what `host` resolves to, until the
/// channel is dropped. A failed lookup keeps the addresses known so far.
async fn resolve_forever(
    host: String,
    port: u16,
    changes: tokio::sync::mpsc::Sender<Change<SocketAddr, Endpoint>>,
) {
    let mut known: HashSet<SocketAddr> = HashSet::new();
    loop {
        match tokio::net::lookup_host((host.as_str(), port)).await {
            Ok(addrs) => {
                let now: HashSet<SocketAddr> = addrs.collect();
                for gone in known.difference(&now) {
                    tracing::info!(executor = %gone, "executor address gone; not balanced over any more");
                    if changes.send(Change::Remove(*gone)).await.is_err() {
                        return;
                    }
                }
                for new in now.difference(&known) {
                    let Ok(endpoint) = Endpoint::from_shared(format!("http://{new}")) else {
                        continue;
                    };
                    tracing::info!(executor = %new, name = %host, "executor address added");
                    if changes
                        .send(Change::Insert(*new, configure(endpoint)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                known = now;
            }
            Err(e) => {
                tracing::warn!(name = %host, error = %e, "cannot resolve the executors' name; keeping the known addresses");
            }
        }
        if changes.is_closed() {
            return;
        }
        tokio::time::sleep(RESOLVE_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_dns_target_without_a_port_is_refused() {
        assert!(matches!(
            channel("dns:///executor"),
            Err(EndpointError::DnsTarget)
        ));
        assert!(matches!(
            channel("dns:///:50052"),
            Err(EndpointError::DnsTarget)
        ));
        assert!(channel("dns:///executor.example:50052").is_ok());
    }
}
