//! Group commit: one task per kind of write collects what concurrent requests want written and
//! runs it as one statement. While a batch is in the database, the next one gathers; under
//! concurrency a batch also waits up to `database.batch_linger_ms` for more items, because each
//! statement has a fixed cost in PostgreSQL (executor setup, the audit chain's per-statement
//! work, a WAL flush) that small batches pay per change. An idle gateway writes each item at once.
//! Every caller still waits for its own item to be durable.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// A write that failed; `unavailable` means the database could not be reached (the caller's
/// change stays recorded as it was and a completer resumes it).
#[derive(Debug, Clone)]
pub struct BatchError {
    pub unavailable: bool,
    pub message: String,
}

impl From<&sqlx::Error> for BatchError {
    fn from(e: &sqlx::Error) -> Self {
        crate::telemetry::metrics::note_db_error(e);
        BatchError {
            unavailable: crate::store::is_unavailable(e),
            message: e.to_string(),
        }
    }
}

impl std::fmt::Display for BatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

type Reply<O> = oneshot::Sender<Result<O, BatchError>>;

/// An item, where to answer, and the span of the request that wants it written (the write's span
/// is its child, or links to it when the write carries several requests' items).
type Item<I, O> = (I, Reply<O>, tracing::Span);

/// What a writer reports for each write: a span with the batch size, and the batch size and
/// commit duration metrics, by statement.
#[derive(Clone, Default)]
pub struct Observe {
    pub statement: &'static str,
    /// A batch whose connection broke goes once more: only for writes that may (a read, or a
    /// record, whose idempotency keys make a second try answer as a replay; never a settle,
    /// which would count an attempt twice if the first try committed unseen).
    pub retry_lost_connection: bool,
    pub metrics: Option<Arc<crate::telemetry::metrics::Metrics>>,
}

pub struct Batcher<I, O> {
    tx: mpsc::Sender<Item<I, O>>,
}

impl<I, O> Clone for Batcher<I, O> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<I: Clone + Send + Sync + 'static, O: Send + 'static> Batcher<I, O> {
    /// Starts the writer task. `exec` writes a whole batch and returns one output per input, in
    /// order. If a batch fails, its items are retried one by one, so one bad item fails alone.
    /// The batch is shared, not copied: only the retry of a failed batch clones its items.
    pub fn spawn<F, Fut>(max_batch: usize, linger: Duration, exec: F) -> Self
    where
        F: Fn(Arc<[I]>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<O>, sqlx::Error>> + Send,
    {
        Self::spawn_observed(Observe::default(), max_batch, linger, exec)
    }

    /// `spawn`, with each write traced and measured as `observe` says.
    pub fn spawn_observed<F, Fut>(
        observe: Observe,
        max_batch: usize,
        linger: Duration,
        exec: F,
    ) -> Self
    where
        F: Fn(Arc<[I]>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<O>, sqlx::Error>> + Send,
    {
        let (tx, mut rx) = mpsc::channel::<Item<I, O>>(max_batch.max(1) * 8);
        let exec = Arc::new(exec);
        tokio::spawn(async move {
            // Lingering pays only under concurrency: after a batch of one (an idle gateway), the
            // next write goes at once and adds no latency.
            let mut concurrent = false;
            while let Some(first) = rx.recv().await {
                let mut items = vec![first];
                let until = tokio::time::Instant::now() + linger;
                while items.len() < max_batch.max(1) {
                    match rx.try_recv() {
                        Ok(item) => items.push(item),
                        Err(_) if linger.is_zero() || !concurrent => break,
                        Err(_) => match tokio::time::timeout_at(until, rx.recv()).await {
                            Ok(Some(item)) => items.push(item),
                            _ => break,
                        },
                    }
                }
                concurrent = items.len() > 1;
                let mut inputs = Vec::with_capacity(items.len());
                let mut replies: Vec<Reply<O>> = Vec::with_capacity(items.len());
                let mut spans = Vec::with_capacity(items.len());
                for (input, reply, span) in items {
                    inputs.push(input);
                    replies.push(reply);
                    spans.push(span);
                }
                let inputs: Arc<[I]> = inputs.into();
                let mut result =
                    observed(&observe, &spans, exec(Arc::clone(&inputs)), inputs.len()).await;
                // The pool pings only a connection idle for a while (startup.rs): one that died
                // since fails its first statement, and a write that may go twice goes once more,
                // on another connection.
                if observe.retry_lost_connection
                    && matches!(&result, Err(e) if crate::store::connection_lost(e))
                {
                    result =
                        observed(&observe, &spans, exec(Arc::clone(&inputs)), inputs.len()).await;
                }
                match result {
                    Ok(outputs) if outputs.len() == replies.len() => {
                        for (reply, out) in replies.into_iter().zip(outputs) {
                            let _ = reply.send(Ok(out));
                        }
                    }
                    result if replies.len() > 1 && !is_unavailable(&result) => {
                        for ((input, reply), span) in inputs.iter().zip(replies).zip(&spans) {
                            let one = exec(Arc::from([input.clone()]));
                            let out = match observed(&observe, std::slice::from_ref(span), one, 1)
                                .await
                            {
                                Ok(mut v) if v.len() == 1 => Ok(v.remove(0)),
                                Ok(_) => Err(mismatch()),
                                Err(e) => Err(BatchError::from(&e)),
                            };
                            let _ = reply.send(out);
                        }
                    }
                    result => {
                        let err = match result {
                            Err(e) => BatchError::from(&e),
                            Ok(_) => mismatch(),
                        };
                        for reply in replies {
                            let _ = reply.send(Err(err.clone()));
                        }
                    }
                }
            }
        });
        Self { tx }
    }

    pub async fn submit(&self, input: I) -> Result<O, BatchError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((input, reply, tracing::Span::current()))
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// Runs one write inside its span and measures it.
async fn observed<O>(
    observe: &Observe,
    requests: &[tracing::Span],
    write: impl Future<Output = Result<Vec<O>, sqlx::Error>>,
    size: usize,
) -> Result<Vec<O>, sqlx::Error> {
    use opentelemetry::trace::TraceContextExt;
    use tracing::Instrument;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let Some(metrics) = &observe.metrics else {
        return write.await;
    };
    let statement = observe.statement;
    let parent = match requests {
        [one] => one.clone(),
        _ => tracing::Span::none(),
    };
    let span = tracing::info_span!(
        parent: &parent,
        "db.write",
        otel.name = %format_args!("group commit {statement}"),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        db.system.name = "postgresql",
        db.operation.batch.size = size as i64,
        profile_gateway.statement = statement,
        error.type = tracing::field::Empty,
    );
    if requests.len() > 1 {
        for r in requests {
            span.add_link(r.context().span().span_context().clone());
        }
    }
    let started = std::time::Instant::now();
    let result = write.instrument(span.clone()).await;
    metrics.db_write(statement, size, started.elapsed());
    if let Err(e) = &result {
        let kind = if crate::store::is_unavailable(e) {
            "database_unavailable"
        } else {
            "database_error"
        };
        span.record("error.type", kind);
        span.record("otel.status_code", "error");
    }
    result
}

fn is_unavailable<O>(r: &Result<Vec<O>, sqlx::Error>) -> bool {
    matches!(r, Err(e) if crate::store::is_unavailable(e))
}

fn mismatch() -> BatchError {
    BatchError {
        unavailable: false,
        message: "a batch returned a different number of results than it was given".into(),
    }
}

fn stopped() -> BatchError {
    BatchError {
        unavailable: true,
        message: "the writer stopped".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    type Batches = Arc<Mutex<Vec<Vec<u32>>>>;

    fn recording(linger: Duration) -> (Batcher<u32, u32>, Batches) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let batcher = Batcher::spawn(64, linger, move |items: Arc<[u32]>| {
            let log = Arc::clone(&log);
            async move {
                log.lock().unwrap().push(items.to_vec());
                Ok(items.iter().map(|i| i * 10).collect())
            }
        });
        (batcher, seen)
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_writer_does_not_linger() {
        let (batcher, seen) = recording(Duration::from_secs(10));
        let started = tokio::time::Instant::now();
        assert_eq!(batcher.submit(1).await.unwrap(), 10);
        assert_eq!(batcher.submit(2).await.unwrap(), 20);
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(*seen.lock().unwrap(), vec![vec![1], vec![2]]);
    }

    #[tokio::test(start_paused = true)]
    async fn under_concurrency_a_batch_waits_for_more_items() {
        let (batcher, seen) = recording(Duration::from_secs(10));
        // Two at once: a batch of two, written at once.
        let (a, b) = tokio::join!(batcher.submit(1), batcher.submit(2));
        assert_eq!((a.unwrap(), b.unwrap()), (10, 20));
        // Now the writer lingers: an item 5 s after the first joins its batch.
        let late = async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            batcher.submit(4).await
        };
        let (c, d) = tokio::join!(batcher.submit(3), late);
        assert_eq!((c.unwrap(), d.unwrap()), (30, 40));
        assert_eq!(*seen.lock().unwrap(), vec![vec![1, 2], vec![3, 4]]);
    }
}
