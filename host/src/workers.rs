//! Thread-per-core execution for the data plane.
//!
//! Each worker is an OS thread running its own single-threaded tokio
//! runtime. A connection is handed to one worker and everything it spawns
//! (its HTTP/2 streams, their sockets) stays there, so the bytes of one
//! tunnel never cross threads. Measured here: a work-stealing runtime's
//! cross-thread wakeups cost about 40% of bulk throughput
//! (docs/BENCHMARKS.md).

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;
use tokio::task::JoinHandle;

pub struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
}

impl Workers {
    /// One worker per CPU the process may use.
    pub fn per_cpu() -> io::Result<Workers> {
        Workers::start(
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        )
    }

    pub fn start(count: usize) -> io::Result<Workers> {
        let mut handles = Vec::with_capacity(count.max(1));
        for i in 0..count.max(1) {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name(format!("shimgate-worker-{i}"))
                .spawn(move || {
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => {
                            let _ = tx.send(Ok(rt.handle().clone()));
                            // Serve spawned tasks for as long as the process lives.
                            rt.block_on(std::future::pending::<()>());
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    }
                })?;
            let handle = rx
                .recv()
                .map_err(|_| io::Error::other("worker thread died while starting"))??;
            handles.push(handle);
        }
        Ok(Workers {
            handles,
            next: AtomicUsize::new(0),
        })
    }

    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// The next worker, round robin.
    pub fn pick(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len()
    }

    /// Runs `task` on worker `i` (modulo the number of workers).
    pub fn spawn_on<F>(&self, i: usize, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handles[i % self.handles.len()].spawn(task)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_stay_on_their_worker() {
        let workers = Workers::start(2).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let names: Vec<String> = rt.block_on(async {
            let mut names = Vec::new();
            for i in 0..4 {
                let name = workers
                    .spawn_on(i, async {
                        // A task spawned from a worker runs on the same worker.
                        tokio::spawn(async {
                            std::thread::current().name().unwrap_or_default().to_owned()
                        })
                        .await
                        .unwrap()
                    })
                    .await
                    .unwrap();
                names.push(name);
            }
            names
        });
        assert_eq!(
            names,
            [
                "shimgate-worker-0",
                "shimgate-worker-1",
                "shimgate-worker-0",
                "shimgate-worker-1"
            ]
        );
    }
}
