//! A minimal HTTP/1.1 responder for `/metrics`, `/health/live` and `/health/ready`.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::Metrics;

/// Binds `addr` (errors at start-up, before any event is read) and serves until the task is dropped.
pub async fn serve(
    addr: &str,
    metrics: Arc<Metrics>,
    ready_max_lag: Option<f64>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    let local: SocketAddr = listener.local_addr()?;
    tracing::info!(address = %local, "metrics and health endpoints");
    Ok(tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                continue;
            };
            let m = metrics.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut n = 0;
                // Read until the end of the request head (or the buffer is full).
                while n < buf.len() {
                    match sock.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => {
                            n += k;
                            if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                                break;
                            }
                        }
                    }
                }
                let head = String::from_utf8_lossy(&buf[..n]);
                let path = head.split_whitespace().nth(1).unwrap_or("");
                let (status, ctype, body) = match path {
                    "/metrics" => ("200 OK", "text/plain; version=0.0.4", m.render()),
                    "/health/live" => ("200 OK", "text/plain", "live\n".to_string()),
                    "/health/ready" => match m.not_ready(ready_max_lag) {
                        None => ("200 OK", "text/plain", "ready\n".to_string()),
                        Some(why) => ("503 Service Unavailable", "text/plain", format!("{why}\n")),
                    },
                    _ => (
                        "404 Not Found",
                        "text/plain",
                        "try /metrics, /health/live, /health/ready\n".to_string(),
                    ),
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    }))
}
