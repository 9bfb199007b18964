//! A load generator for the http-ingest driver: posts JSON readings from several
//! threads and prints what the endpoint sustained.
//!
//! ```text
//! ingest-load URL PASSWORD [REQUESTS] [READINGS_PER_REQUEST] [THREADS]
//! ```

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(url), Some(password)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: ingest-load URL PASSWORD [REQUESTS] [READINGS_PER_REQUEST] [THREADS]");
        std::process::exit(2);
    };
    let number = |i: usize, default: usize| -> usize {
        args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default)
    };
    let (requests, per_request, threads) = (number(3, 2000), number(4, 1), number(5, 4).max(1));
    let endpoint = format!("{}/readings", url.trim_end_matches('/'));
    let auth = format!("Bearer {password}");
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (endpoint, auth) = (endpoint.clone(), auth.clone());
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .build()
                    .into();
                let mut latencies = Vec::new();
                for r in (t..requests).step_by(threads) {
                    let readings: Vec<serde_json::Value> = (0..per_request)
                        .map(|k| {
                            serde_json::json!({
                                "ts": 1_700_000_000_000u64 + (r * per_request + k) as u64,
                                "value": { "watts": (r + k) % 3000, "meter": "main" }
                            })
                        })
                        .collect();
                    let body = serde_json::to_vec(&readings).unwrap_or_default();
                    let sent = Instant::now();
                    match agent
                        .post(&endpoint)
                        .header("Authorization", &auth)
                        .content_type("application/json")
                        .send(&body[..])
                    {
                        Ok(response) if response.status().as_u16() == 200 => {}
                        Ok(response) => {
                            eprintln!("request {r}: status {}", response.status());
                            std::process::exit(1);
                        }
                        Err(err) => {
                            eprintln!("request {r}: {err}");
                            std::process::exit(1);
                        }
                    }
                    latencies.push(sent.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies: Vec<Duration> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap_or_default())
        .collect();
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let readings = requests * per_request;
    println!(
        "{requests} requests x {per_request} readings, {threads} threads: {:.0} requests/s, {:.0} readings/s, latency p50 {:.2} ms, p99 {:.2} ms",
        requests as f64 / elapsed,
        readings as f64 / elapsed,
        at(0.5),
        at(0.99)
    );
}
