//! The log's writer: lines gathered in memory and written to stderr by a thread of its own,
//! in one `write` per batch every [`INTERVAL`].
//!
//! Written by hand because the maintained option, tracing-appender's non-blocking writer,
//! hands each line to its thread through a channel whose receiver spins (`sched_yield`) before
//! it sleeps: on a server pinned to one core that was three `sched_yield`s and one `write` per
//! request (every data request logs its audit line), taken from the requests themselves.
//! Here a line costs a lock and a copy; nothing wakes up per line.
//!
//! Lines are never dropped: past [`MAX_PENDING`] bytes, the thread logging writes the batch
//! itself. Order is kept: a batch is taken and written under one lock. Lines still pending
//! when the process ends are written when the [`BatchedStderr`]'s guard is dropped; a crash
//! (SIGKILL) loses at most the last [`INTERVAL`] of lines.
//!
//! ```
//! use std::io::Write;
//! use tracing_subscriber::fmt::MakeWriter;
//!
//! let (logs, guard) = fhirgate::log_writer::BatchedStderr::start();
//! logs.make_writer().write_all(b"one line\n").unwrap();
//! drop(guard); // written now
//! ```

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often pending lines are written.
pub const INTERVAL: Duration = Duration::from_millis(20);

/// Pending bytes past which the logging thread writes the batch itself.
pub const MAX_PENDING: usize = 1 << 20;

struct Shared {
    pending: Mutex<Vec<u8>>,
    /// Held while a batch is taken and written, so batches reach stderr in order.
    io: Mutex<()>,
    stop: AtomicBool,
}

impl Shared {
    fn write_pending(&self) {
        let Ok(_io) = self.io.lock() else {
            return;
        };
        let batch = match self.pending.lock() {
            Ok(mut p) => std::mem::take(&mut *p),
            Err(_) => return,
        };
        if !batch.is_empty() {
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(&batch);
            let _ = err.flush();
        }
    }
}

/// A `MakeWriter` for tracing-subscriber's fmt layer.
#[derive(Clone)]
pub struct BatchedStderr {
    shared: Arc<Shared>,
}

/// Stops the writing thread and writes what is pending when dropped.
pub struct BatchGuard {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BatchedStderr {
    /// The writer and the guard of its thread.
    pub fn start() -> (BatchedStderr, BatchGuard) {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Vec::with_capacity(64 * 1024)),
            io: Mutex::new(()),
            stop: AtomicBool::new(false),
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("fhirgate-log".into())
            .spawn(move || {
                while !worker.stop.load(Ordering::Acquire) {
                    std::thread::park_timeout(INTERVAL);
                    worker.write_pending();
                }
            })
            .ok();
        (
            BatchedStderr {
                shared: shared.clone(),
            },
            BatchGuard { shared, thread },
        )
    }
}

impl Drop for BatchGuard {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
        self.shared.write_pending();
    }
}

/// One event's writer.
pub struct BatchHandle {
    shared: Arc<Shared>,
}

impl Write for BatchHandle {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let full = match self.shared.pending.lock() {
            Ok(mut p) => {
                p.extend_from_slice(buf);
                p.len() >= MAX_PENDING
            }
            // a poisoned buffer: write the line directly rather than lose it
            Err(_) => {
                let mut err = std::io::stderr().lock();
                err.write_all(buf)?;
                false
            }
        };
        if full {
            self.shared.write_pending();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BatchedStderr {
    type Writer = BatchHandle;

    fn make_writer(&'a self) -> Self::Writer {
        BatchHandle {
            shared: self.shared.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::fmt::MakeWriter;

    #[test]
    fn lines_are_pending_until_the_batch_is_written_in_order() {
        let (logs, guard) = BatchedStderr::start();
        for i in 0..100 {
            let mut w = logs.make_writer();
            w.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        {
            let pending = logs.shared.pending.lock().unwrap();
            // the thread may have written some already; what is pending is in order
            let text = String::from_utf8(pending.clone()).unwrap();
            let numbers: Vec<usize> = text
                .lines()
                .map(|l| l.trim_start_matches("line ").parse().unwrap())
                .collect();
            assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
        }
        drop(guard);
        assert!(logs.shared.pending.lock().unwrap().is_empty());
    }

    #[test]
    fn a_full_buffer_is_written_by_the_logging_thread() {
        let (logs, _guard) = BatchedStderr::start();
        let line = vec![b'x'; 4096];
        let mut w = logs.make_writer();
        for _ in 0..(MAX_PENDING / line.len() + 1) {
            w.write_all(&line).unwrap();
        }
        assert!(logs.shared.pending.lock().unwrap().len() < MAX_PENDING);
    }
}
