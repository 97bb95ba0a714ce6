//! Load generator for `bench/run`: open-loop fixed-rate with coordinated-omission correction, or
//! closed-loop with N concurrent workers.
//!
//! Why not `oha`/`wrk2`: every PATCH needs its own `Idempotency-Key` (a reused key is a cheap
//! replay, not a change), and those tools cannot vary a header per request.
//!
//! Open loop (`--rate R --duration D`): request i is due at `t0 + i/R`. It is sent at its due time
//! (or as soon as one of `--concurrency` slots is free), and its latency is measured from the DUE
//! time, not from the moment it was actually sent. A server that stalls therefore shows the whole
//! stall in every request that queued behind it (the coordinated-omission correction).
//!
//! Closed loop (`--concurrency N --duration D`, no `--rate`): N workers each send the next request
//! as soon as the previous one is answered; latency is measured from the send.
//!
//! `{user}` in `--url` (and in `--body`) becomes `<user-prefix><i mod users>` zero-padded to
//! `--user-width` digits, round-robin, so consecutive requests go to different users (one user's
//! changes are serialized by the gateway). `--idempotency-key` adds a unique key per request.
//!
//! Prints one JSON object:
//! `{sent, ok, errors, status_counts, p50_ms, p90_ms, p99_ms, max_ms, achieved_rps, ...}`.
//! `ok` counts HTTP 200 only; every other status and every transport error is an error.
//!
//! Example:
//! `loadgen --url 'http://127.0.0.1:18080/profile/{user}' --method PATCH --users 2000 \
//!    -H 'authorization: Bearer T' -H 'content-type: application/json' --body '{"mobile_number":"9812345678"}' \
//!    --idempotency-key --rate 300 --duration 10 --warmup 1`

use clap::Parser;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "loadgen",
    about = "Open-loop (fixed rate, CO-corrected) or closed-loop HTTP load generator"
)]
struct Args {
    /// Target URL; `{user}` is replaced round-robin (see --users).
    #[arg(long)]
    url: String,
    #[arg(long, default_value = "GET")]
    method: String,
    /// Extra header `name: value` (repeatable).
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// Request body (sent as is; `{user}` is replaced too).
    #[arg(long)]
    body: Option<String>,
    /// Number of users to cycle through for `{user}`; 0 leaves `{user}` alone.
    #[arg(long, default_value_t = 0)]
    users: usize,
    #[arg(long, default_value = "bench-")]
    user_prefix: String,
    #[arg(long, default_value_t = 4)]
    user_width: usize,
    /// Add a unique `Idempotency-Key` header to every request.
    #[arg(long)]
    idempotency_key: bool,
    /// Requests per second (open loop). Without it: closed loop with --concurrency workers.
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds of load (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before the measured part; those requests are sent but not counted.
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,
    /// Open loop: most requests in flight at once. Closed loop: number of workers.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Per-request timeout in seconds (a timeout is an error).
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

#[derive(Default)]
struct Stats {
    /// Latency in microseconds of every measured request that got a response or an error.
    latencies_us: Vec<u64>,
    ok: u64,
    errors: u64,
    status_counts: BTreeMap<String, u64>,
    /// The same latencies by outcome, so shed answers (503) and accepted ones are told apart.
    by_outcome: BTreeMap<String, Vec<u64>>,
    /// Open loop: the most a send started after its due time (generator or slot lag).
    max_send_lag_us: u64,
    /// Open loop: every send's lag, to tell a late generator (its own core saturated) from a
    /// slow server in the latencies.
    send_lags_us: Vec<u64>,
    first_measured: Option<Instant>,
    last_done: Option<Instant>,
}

impl Stats {
    fn record(&mut self, outcome: &str, ok: bool, latency: Duration, done: Instant) {
        self.latencies_us.push(latency.as_micros() as u64);
        if ok {
            self.ok += 1;
        } else {
            self.errors += 1;
        }
        *self.status_counts.entry(outcome.to_string()).or_insert(0) += 1;
        self.by_outcome
            .entry(outcome.to_string())
            .or_default()
            .push(latency.as_micros() as u64);
        self.last_done = Some(self.last_done.map_or(done, |d| d.max(done)));
    }
}

struct Target {
    client: reqwest::Client,
    method: reqwest::Method,
    headers: reqwest::header::HeaderMap,
    args: Args,
    run_id: String,
}

impl Target {
    fn user(&self, i: u64) -> String {
        let n = i as usize % self.args.users.max(1);
        format!(
            "{}{:0width$}",
            self.args.user_prefix,
            n,
            width = self.args.user_width
        )
    }

    /// Sends request number `i`; returns the outcome label and whether it counts as ok (HTTP 200).
    async fn send(&self, i: u64) -> (String, bool) {
        let (url, body) = if self.args.users > 0 {
            let user = self.user(i);
            (
                self.args.url.replace("{user}", &user),
                self.args.body.as_ref().map(|b| b.replace("{user}", &user)),
            )
        } else {
            (self.args.url.clone(), self.args.body.clone())
        };
        let mut request = self
            .client
            .request(self.method.clone(), url)
            .headers(self.headers.clone());
        if self.args.idempotency_key {
            request = request.header("idempotency-key", format!("lg-{}-{i:010}", self.run_id));
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                // Read the whole body so the connection is reused.
                let body_ok = response.bytes().await.is_ok();
                if body_ok {
                    (status.to_string(), status == 200)
                } else {
                    ("body_error".to_string(), false)
                }
            }
            Err(e) if e.is_timeout() => ("timeout".to_string(), false),
            Err(e) if e.is_connect() => ("connect_error".to_string(), false),
            Err(_) => ("transport_error".to_string(), false),
        }
    }
}

fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1000.0
}

fn parse_headers(raw: &[String]) -> Result<reqwest::header::HeaderMap, String> {
    let mut map = reqwest::header::HeaderMap::new();
    for h in raw {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| format!("header `{h}` is not `name: value`"))?;
        let name = reqwest::header::HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|e| format!("header name `{name}`: {e}"))?;
        let value = reqwest::header::HeaderValue::from_str(value.trim())
            .map_err(|e| format!("header value of `{name}`: {e}"))?;
        map.append(name, value);
    }
    Ok(map)
}

async fn open_loop(target: Arc<Target>, rate: f64, stats: Arc<Mutex<Stats>>) -> Duration {
    let args = &target.args;
    let warm = (rate * args.warmup).round() as u64;
    let total = warm + (rate * args.duration).round() as u64;
    let slots = Arc::new(Semaphore::new(args.concurrency));
    let t0 = Instant::now() + Duration::from_millis(20);
    for i in 0..total {
        let due = t0 + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let permit = Arc::clone(&slots)
            .acquire_owned()
            .await
            .expect("semaphore open");
        let measured = i >= warm;
        if measured {
            let lag = Instant::now().saturating_duration_since(due).as_micros() as u64;
            let mut s = stats.lock().unwrap();
            s.max_send_lag_us = s.max_send_lag_us.max(lag);
            s.send_lags_us.push(lag);
            s.first_measured.get_or_insert(due);
        }
        let target = Arc::clone(&target);
        let stats = Arc::clone(&stats);
        tokio::spawn(async move {
            let (outcome, ok) = target.send(i).await;
            let done = Instant::now();
            if measured {
                // Coordinated-omission correction: from the due time, not the actual send.
                stats.lock().unwrap().record(&outcome, ok, done - due, done);
            }
            drop(permit);
        });
    }
    let _all = slots
        .acquire_many(args.concurrency as u32)
        .await
        .expect("semaphore open");
    let s = stats.lock().unwrap();
    match (s.first_measured, s.last_done) {
        (Some(a), Some(b)) => b.saturating_duration_since(a),
        _ => Duration::ZERO,
    }
}

async fn closed_loop(target: Arc<Target>, stats: Arc<Mutex<Stats>>) -> Duration {
    let args = &target.args;
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let end = measure_from + Duration::from_secs_f64(args.duration);
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let target = Arc::clone(&target);
        let stats = Arc::clone(&stats);
        let next = Arc::clone(&next);
        workers.push(tokio::spawn(async move {
            loop {
                let sent_at = Instant::now();
                if sent_at >= end {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let (outcome, ok) = target.send(i).await;
                let done = Instant::now();
                if sent_at >= measure_from && done <= end {
                    stats
                        .lock()
                        .unwrap()
                        .record(&outcome, ok, done - sent_at, done);
                }
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    stats.lock().unwrap().first_measured = Some(measure_from);
    end - measure_from
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = runtime.block_on(run(args));
    std::process::exit(code);
}

async fn run(args: Args) -> i32 {
    let headers = match parse_headers(&args.headers) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return 2;
        }
    };
    let method = match reqwest::Method::from_bytes(args.method.to_ascii_uppercase().as_bytes()) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("loadgen: method: {e}");
            return 2;
        }
    };
    if args.rate.is_some_and(|r| r.is_nan() || r <= 0.0)
        || args.duration.is_nan()
        || args.duration <= 0.0
        || args.concurrency == 0
    {
        eprintln!("loadgen: --rate and --duration must be > 0, --concurrency >= 1");
        return 2;
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_nodelay(true)
        .timeout(Duration::from_secs_f64(args.timeout))
        .build()
        .expect("http client");
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let target = Arc::new(Target {
        client,
        method,
        headers,
        args: args.clone(),
        run_id,
    });
    let stats = Arc::new(Mutex::new(Stats::default()));
    let elapsed = match args.rate {
        Some(rate) => open_loop(Arc::clone(&target), rate, Arc::clone(&stats)).await,
        None => closed_loop(Arc::clone(&target), Arc::clone(&stats)).await,
    };
    let mut s = std::mem::take(&mut *stats.lock().unwrap());
    s.latencies_us.sort_unstable();
    let completed = s.ok + s.errors;
    let by_status: serde_json::Map<String, serde_json::Value> = s
        .by_outcome
        .iter_mut()
        .map(|(k, v)| {
            v.sort_unstable();
            (
                k.clone(),
                serde_json::json!({"count": v.len(), "p50_ms": percentile(v, 0.50), "p99_ms": percentile(v, 0.99)}),
            )
        })
        .collect();
    let secs = elapsed.as_secs_f64().max(1e-9);
    let mut send_lags = s.send_lags_us.clone();
    send_lags.sort_unstable();
    let out = serde_json::json!({
        "mode": if args.rate.is_some() { "open" } else { "closed" },
        "target_rps": args.rate,
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "sent": completed,
        "ok": s.ok,
        "errors": s.errors,
        "status_counts": s.status_counts,
        "by_status": by_status,
        "p50_ms": percentile(&s.latencies_us, 0.50),
        "p90_ms": percentile(&s.latencies_us, 0.90),
        "p99_ms": percentile(&s.latencies_us, 0.99),
        "max_ms": s.latencies_us.last().map_or(0.0, |v| *v as f64 / 1000.0),
        "mean_ms": if completed > 0 { s.latencies_us.iter().sum::<u64>() as f64 / completed as f64 / 1000.0 } else { 0.0 },
        "max_send_lag_ms": s.max_send_lag_us as f64 / 1000.0,
        "send_lag_p50_ms": percentile(&send_lags, 0.50),
        "send_lag_p99_ms": percentile(&send_lags, 0.99),
        "achieved_rps": s.ok as f64 / secs,
        "elapsed_s": secs,
    });
    println!("{out}");
    0
}
