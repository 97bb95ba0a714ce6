//! Group commit: one task per kind of write collects what concurrent requests want written and
//! runs it as one statement. Nothing waits for a timer: while a batch is in the database, the next
//! one gathers, so an idle gateway writes each item at once and a busy one amortizes round trips
//! and WAL flushes over many changes. Every caller still waits for its own item to be durable.

use std::future::Future;
use std::sync::Arc;
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

pub struct Batcher<I, O> {
    tx: mpsc::Sender<(I, Reply<O>)>,
}

impl<I, O> Clone for Batcher<I, O> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<I: Clone + Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// Starts the writer task. `exec` writes a whole batch and returns one output per input, in
    /// order. If a batch fails, its items are retried one by one, so one bad item fails alone.
    pub fn spawn<F, Fut>(max_batch: usize, exec: F) -> Self
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<O>, sqlx::Error>> + Send,
    {
        let (tx, mut rx) = mpsc::channel::<(I, Reply<O>)>(max_batch.max(1) * 8);
        let exec = Arc::new(exec);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut items = vec![first];
                while items.len() < max_batch.max(1) {
                    match rx.try_recv() {
                        Ok(item) => items.push(item),
                        Err(_) => break,
                    }
                }
                let (inputs, replies): (Vec<I>, Vec<Reply<O>>) = items.into_iter().unzip();
                match exec(inputs.clone()).await {
                    Ok(outputs) if outputs.len() == replies.len() => {
                        for (reply, out) in replies.into_iter().zip(outputs) {
                            let _ = reply.send(Ok(out));
                        }
                    }
                    result if replies.len() > 1 && !is_unavailable(&result) => {
                        for (input, reply) in inputs.into_iter().zip(replies) {
                            let out = match exec(vec![input]).await {
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
        self.tx.send((input, reply)).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
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
