//! Blocking database connections lent to async readers: a read waits for a permit,
//! runs on Tokio's blocking pool with a connection of its own, and gives it back.

use parking_lot::Mutex;
use polyport_core::{HubError, HubResult};
use tokio::sync::Semaphore;

use crate::error::StoreError;

pub(crate) struct Pool<C> {
    conns: Mutex<Vec<C>>,
    /// Held by a read until its connection is back, even when its caller gave up.
    permits: std::sync::Arc<Semaphore>,
}

impl<C: Send + 'static> Pool<C> {
    pub(crate) fn new(conns: Vec<C>) -> Self {
        Self {
            permits: std::sync::Arc::new(Semaphore::new(conns.len())),
            conns: Mutex::new(conns),
        }
    }

    /// Runs `f` with a connection on the blocking pool.
    pub(crate) async fn run<R, E>(
        self: &std::sync::Arc<Self>,
        f: impl FnOnce(&mut C) -> Result<R, E> + Send + 'static,
    ) -> HubResult<R>
    where
        R: Send + 'static,
        E: Into<StoreError> + Send + 'static,
    {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| HubError::ShuttingDown)?;
        let pool = self.clone();
        let started = std::time::Instant::now();
        let out = tokio::task::spawn_blocking(move || {
            let mut conn = pool
                .conns
                .lock()
                .pop()
                .ok_or_else(|| StoreError::Corrupt("reader pool empty".into()))?;
            let r = f(&mut conn);
            pool.conns.lock().push(conn);
            drop(permit);
            r.map_err(Into::into)
        })
        .await
        .map_err(|e| HubError::Storage(format!("read task failed: {e}")))?;
        metrics::histogram!("polyport_store_read_seconds").record(started.elapsed().as_secs_f64());
        Ok(out?)
    }
}
