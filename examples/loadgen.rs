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
//! changes are serialized by the gateway); `{n}` becomes the zero-padded number alone (`0042`), so
//! a per-user upstream object such as `wlt_bench_{n}` can be named. `--idempotency-key` adds a
//! unique key per request.
//!
//! Fan-out (`--fanout FILE`, instead of `--url`/`--method`/`--body`): each scheduled request is a
//! SET of HTTP calls, issued concurrently, and its latency is the time until the slowest of them
//! has completed (from the same start as above: the due time in open loop). It counts as ok only
//! when every call got a 2xx. This is what a caller calling the upstreams itself would wait for, so
//! it is the baseline the gateway's added latency is measured against (bench/README.md). FILE is a
//! JSON array with one object per call:
//! `[{"name": "juspay_wallet", "method": "POST", "url": "http://h/wallets/wlt_bench_{n}",
//!    "headers": ["content-type: application/x-www-form-urlencoded", "x-a: {user}"],
//!    "body": "command=update&mobile_number=9812345678"}, ...]`.
//! `name`, `headers` and `body` are optional; `{user}` and `{n}` are replaced in the URL, the
//! header values and the body, all calls of one request naming the same user. `-H` headers (and
//! `--idempotency-key`) are added to every call.
//!
//! Prints one JSON object:
//! `{sent, ok, errors, status_counts, p50_ms, p90_ms, p99_ms, max_ms, achieved_rps, ...}`.
//! `ok` counts HTTP 200 only; every other status and every transport error is an error. In
//! fan-out mode a request is ok when every call answered 2xx; its `status_counts` label is `200`
//! (every call answered 200), `2xx` (every call 2xx, not all 200), or `<call name>:<outcome>` of the
//! first call in FILE order that failed. Fan-out adds `fanout_calls` (the number of calls per
//! request) and `calls`: per call, its name, method, URL template, `status_counts`, and p50/p99 of
//! its own completion, measured from the same start as the request.
//!
//! Example:
//! `loadgen --url 'http://127.0.0.1:18080/profile/{user}' --method PATCH --users 2000 \
//!    -H 'authorization: Bearer T' -H 'content-type: application/json' --body '{"mobile_number":"9812345678"}' \
//!    --idempotency-key --rate 300 --duration 10 --warmup 1`
//! `loadgen --fanout bench-fanout.json --users 2000 --rate 300 --duration 10 --warmup 1`

use clap::Parser;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
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
    /// Target URL; `{user}` and `{n}` are replaced round-robin (see --users).
    #[arg(long, required_unless_present = "fanout")]
    url: Option<String>,
    #[arg(long, default_value = "GET")]
    method: String,
    /// Fan-out mode: a JSON file listing the calls every request issues concurrently (see the
    /// file's header); latency is that of the slowest call, ok needs a 2xx from every call.
    #[arg(long, conflicts_with_all = ["url", "body", "method"])]
    fanout: Option<std::path::PathBuf>,
    /// Extra header `name: value` (repeatable).
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// Request body (sent as is; `{user}` and `{n}` are replaced too).
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
    /// Fan-out: per call (in file order), its own outcomes and completion latencies.
    calls: Vec<CallStats>,
    /// Open loop: the most a send started after its due time (generator or slot lag).
    max_send_lag_us: u64,
    /// Open loop: every send's lag, to tell a late generator (its own core saturated) from a
    /// slow server in the latencies.
    send_lags_us: Vec<u64>,
    first_measured: Option<Instant>,
    last_done: Option<Instant>,
}

#[derive(Default)]
struct CallStats {
    latencies_us: Vec<u64>,
    status_counts: BTreeMap<String, u64>,
}

impl Stats {
    /// Records one request that started (was due, or was sent) at `start` and ended at `done`.
    fn record(&mut self, sent: &Sent, start: Instant, done: Instant) {
        let latency = done.saturating_duration_since(start).as_micros() as u64;
        self.latencies_us.push(latency);
        if sent.ok {
            self.ok += 1;
        } else {
            self.errors += 1;
        }
        *self.status_counts.entry(sent.outcome.clone()).or_insert(0) += 1;
        self.by_outcome
            .entry(sent.outcome.clone())
            .or_default()
            .push(latency);
        if self.calls.len() < sent.calls.len() {
            self.calls.resize_with(sent.calls.len(), CallStats::default);
        }
        for (stats, (outcome, call_done)) in self.calls.iter_mut().zip(&sent.calls) {
            stats
                .latencies_us
                .push(call_done.saturating_duration_since(start).as_micros() as u64);
            *stats.status_counts.entry(outcome.clone()).or_insert(0) += 1;
        }
        self.last_done = Some(self.last_done.map_or(done, |d| d.max(done)));
    }
}

/// One call of a fan-out file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CallSpec {
    name: Option<String>,
    method: String,
    url: String,
    #[serde(default)]
    headers: Vec<String>,
    body: Option<String>,
}

/// One HTTP call a request makes: the single target, or one call of a fan-out.
struct Call {
    name: String,
    method: reqwest::Method,
    /// With its `{user}`/`{n}` placeholders.
    url: String,
    /// Headers whose value has no placeholder, built once.
    headers: HeaderMap,
    /// Headers whose value names `{user}` or `{n}`, built per request.
    templated: Vec<(HeaderName, String)>,
    body: Option<String>,
}

impl Call {
    fn new(
        name: String,
        method: &str,
        url: String,
        headers: Vec<(HeaderName, String)>,
        body: Option<String>,
    ) -> Result<Self, String> {
        let method = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
            .map_err(|e| format!("method `{method}`: {e}"))?;
        let mut fixed = HeaderMap::new();
        let mut templated = Vec::new();
        for (name, value) in headers {
            if has_placeholder(&value) {
                templated.push((name, value));
            } else {
                let v = HeaderValue::from_str(&value)
                    .map_err(|e| format!("header value of `{name}`: {e}"))?;
                fixed.append(name, v);
            }
        }
        Ok(Self {
            name,
            method,
            url,
            headers: fixed,
            templated,
            body,
        })
    }
}

fn has_placeholder(s: &str) -> bool {
    s.contains("{user}") || s.contains("{n}")
}

/// What one scheduled request came to.
struct Sent {
    /// The label counted in `status_counts` (see the file's header).
    outcome: String,
    ok: bool,
    /// Fan-out only: per call (in file order), its outcome and when it completed.
    calls: Vec<(String, Instant)>,
}

struct Target {
    client: reqwest::Client,
    calls: Vec<Call>,
    /// `--fanout`: every call is issued concurrently, ok needs a 2xx from each.
    fanout: bool,
    args: Args,
    run_id: String,
}

/// The bench user of one request: `{user}` and `{n}`.
struct User {
    name: String,
    number: String,
}

impl User {
    fn fill(&self, text: &str) -> String {
        text.replace("{user}", &self.name)
            .replace("{n}", &self.number)
    }
}

impl Target {
    fn user(&self, i: u64) -> User {
        let n = i as usize % self.args.users.max(1);
        let number = format!("{:0width$}", n, width = self.args.user_width);
        User {
            name: format!("{}{number}", self.args.user_prefix),
            number,
        }
    }

    /// Sends request number `i`: one call, or every call of the fan-out at once.
    async fn send(&self, i: u64) -> Sent {
        let user = (self.args.users > 0).then(|| self.user(i));
        let key = self
            .args
            .idempotency_key
            .then(|| format!("lg-{}-{i:010}", self.run_id));
        if !self.fanout {
            let (outcome, status) = self
                .call(&self.calls[0], user.as_ref(), key.as_deref())
                .await;
            return Sent {
                ok: status == Some(200),
                outcome,
                calls: Vec::new(),
            };
        }
        let results = futures_util::future::join_all(self.calls.iter().map(|c| async {
            let (outcome, status) = self.call(c, user.as_ref(), key.as_deref()).await;
            (outcome, status, Instant::now())
        }))
        .await;
        let ok = |s: &Option<u16>| s.is_some_and(|s| (200..300).contains(&s));
        let outcome = match results
            .iter()
            .zip(&self.calls)
            .find(|((_, s, _), _)| !ok(s))
        {
            Some(((outcome, _, _), call)) => format!("{}:{outcome}", call.name),
            None if results.iter().all(|(_, s, _)| *s == Some(200)) => "200".to_string(),
            None => "2xx".to_string(),
        };
        Sent {
            ok: results.iter().all(|(_, s, _)| ok(s)),
            outcome,
            calls: results.into_iter().map(|(o, _, t)| (o, t)).collect(),
        }
    }

    /// Sends one call; returns its outcome label and, when the whole answer was read, its status.
    async fn call(
        &self,
        call: &Call,
        user: Option<&User>,
        key: Option<&str>,
    ) -> (String, Option<u16>) {
        let fill = |text: &str| match user {
            Some(u) => u.fill(text),
            None => text.to_string(),
        };
        let mut request = self
            .client
            .request(call.method.clone(), fill(&call.url))
            .headers(call.headers.clone());
        for (name, value) in &call.templated {
            match HeaderValue::from_str(&fill(value)) {
                Ok(v) => request = request.header(name, v),
                Err(_) => return ("bad_header".to_string(), None),
            }
        }
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        if let Some(body) = &call.body {
            request = request.body(fill(body));
        }
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                // Read the whole body so the connection is reused.
                if response.bytes().await.is_ok() {
                    (status.to_string(), Some(status))
                } else {
                    ("body_error".to_string(), None)
                }
            }
            Err(e) if e.is_timeout() => ("timeout".to_string(), None),
            Err(e) if e.is_connect() => ("connect_error".to_string(), None),
            Err(_) => ("transport_error".to_string(), None),
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

/// `name: value` lines; the values stay text, so they can hold `{user}` and `{n}`.
fn parse_headers(raw: &[String]) -> Result<Vec<(HeaderName, String)>, String> {
    raw.iter()
        .map(|h| {
            let (name, value) = h
                .split_once(':')
                .ok_or_else(|| format!("header `{h}` is not `name: value`"))?;
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|e| format!("header name `{name}`: {e}"))?;
            Ok((name, value.trim().to_string()))
        })
        .collect()
}

/// The calls of every request: the one target of `--url`, or those of the `--fanout` file, each
/// with the `-H` headers added.
fn calls(args: &Args) -> Result<Vec<Call>, String> {
    let common = parse_headers(&args.headers)?;
    let Some(path) = &args.fanout else {
        let url = args.url.clone().ok_or("--url or --fanout is needed")?;
        return Ok(vec![Call::new(
            "target".to_string(),
            &args.method,
            url,
            common,
            args.body.clone(),
        )?]);
    };
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let specs: Vec<CallSpec> =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if specs.is_empty() {
        return Err(format!("{}: no calls", path.display()));
    }
    specs
        .into_iter()
        .enumerate()
        .map(|(k, spec)| {
            let mut headers = parse_headers(&spec.headers)?;
            headers.extend(common.iter().cloned());
            let name = spec.name.unwrap_or_else(|| format!("call{k}"));
            Call::new(name, &spec.method, spec.url, headers, spec.body)
        })
        .collect()
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
            let sent = target.send(i).await;
            let done = Instant::now();
            if measured {
                // Coordinated-omission correction: from the due time, not the actual send.
                stats.lock().unwrap().record(&sent, due, done);
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
                let sent = target.send(i).await;
                let done = Instant::now();
                if sent_at >= measure_from && done <= end {
                    stats.lock().unwrap().record(&sent, sent_at, done);
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
    let calls = match calls(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("loadgen: {e}");
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
        // A fan-out request holds one connection per call.
        .pool_max_idle_per_host(args.concurrency * calls.len())
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_nodelay(true)
        .timeout(Duration::from_secs_f64(args.timeout))
        .build()
        .expect("http client");
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let target = Arc::new(Target {
        client,
        calls,
        fanout: args.fanout.is_some(),
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
    let mut out = serde_json::json!({
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
    if target.fanout {
        // A run with no measured request has no per-call stats yet.
        s.calls.resize_with(target.calls.len(), CallStats::default);
        let calls: Vec<serde_json::Value> = target
            .calls
            .iter()
            .zip(s.calls.iter_mut())
            .map(|(call, stats)| {
                stats.latencies_us.sort_unstable();
                serde_json::json!({
                    "name": call.name,
                    "method": call.method.as_str(),
                    "url": call.url,
                    "status_counts": stats.status_counts,
                    "p50_ms": percentile(&stats.latencies_us, 0.50),
                    "p99_ms": percentile(&stats.latencies_us, 0.99),
                })
            })
            .collect();
        out["fanout_calls"] = serde_json::json!(target.calls.len());
        out["calls"] = serde_json::Value::Array(calls);
    }
    println!("{out}");
    0
}
