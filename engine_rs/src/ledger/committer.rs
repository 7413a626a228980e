//! The ledger's own commit thread: a batch of ledger calls the event loop hands over runs,
//! and commits, on a thread of the extension's that never takes the GIL.
//!
//! A Python thread that runs the batch with the GIL released must take the GIL back to
//! return its outcome, twice a batch (leaving the Rust call, then handing the outcome to the
//! loop), and each time wait for the event loop's thread to let go of it: up to the
//! interpreter's switch interval (5 ms) while the loop is busy, which is when batches form
//! (bench/RESULTS.md, issue 15 step 23). Here the batch's outcome waits in a slot of plain
//! Rust data and one byte on a socket wakes the loop, which collects it holding the GIL it
//! already has. One batch is in flight at a time (the store's group commit runs them one
//! after another); a second is refused.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

type Task<T> = Box<dyn FnOnce() -> T + Send>;

/// A task's outcome, or the panic it met (a bug: the caller reports it).
pub type Outcome<T> = thread::Result<T>;

pub struct Committer<T: Send + 'static> {
    tasks: Option<Sender<Task<T>>>,
    thread: Option<JoinHandle<()>>,
    /// The loop's end of the wake-up socket: readable once a task has finished.
    ready: UnixStream,
    finished: Arc<Mutex<Option<Outcome<T>>>>,
    in_flight: AtomicBool,
}

impl<T: Send + 'static> Committer<T> {
    pub fn spawn(name: &str) -> std::io::Result<Self> {
        let (ready, wake) = UnixStream::pair()?;
        ready.set_nonblocking(true)?;
        let (tasks, queue) = channel::<Task<T>>();
        let finished = Arc::new(Mutex::new(None));
        let slot = Arc::clone(&finished);
        let thread = thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                // ends when the committer is dropped (its sender with it)
                while let Ok(task) = queue.recv() {
                    let outcome = catch_unwind(AssertUnwindSafe(task));
                    *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome);
                    // A failed write leaves the loop waiting: nothing else could tell it.
                    // The socket holds far more than the one byte a batch writes.
                    let _ = (&wake).write_all(&[1]);
                }
            })?;
        Ok(Self {
            tasks: Some(tasks),
            thread: Some(thread),
            ready,
            finished,
            in_flight: AtomicBool::new(false),
        })
    }

    /// The descriptor the event loop watches: readable once the task has finished.
    pub fn ready_fd(&self) -> RawFd {
        self.ready.as_raw_fd()
    }

    /// Runs `task` on the thread; false (and `task` is not run) while another is in flight.
    pub fn start(&self, task: impl FnOnce() -> T + Send + 'static) -> bool {
        if self.in_flight.swap(true, Ordering::AcqRel) {
            return false;
        }
        let sent = self
            .tasks
            .as_ref()
            .is_some_and(|tasks| tasks.send(Box::new(task)).is_ok());
        if !sent {
            self.in_flight.store(false, Ordering::Release);
        }
        sent
    }

    /// The finished task's outcome (None while it runs, or when none was started); the
    /// wake-up bytes are drained.
    pub fn take(&self) -> Option<Outcome<T>> {
        let mut drain = [0u8; 64];
        while matches!((&self.ready).read(&mut drain), Ok(n) if n > 0) {}
        let outcome = self
            .finished
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if outcome.is_some() {
            self.in_flight.store(false, Ordering::Release);
        }
        outcome
    }

    /// Ends the thread after the task in flight, if any, and returns that task's outcome
    /// when nobody took it.
    pub fn close(mut self) -> Option<Outcome<T>> {
        self.join();
        self.take()
    }

    fn join(&mut self) {
        self.tasks.take(); // the thread's queue ends: it finishes its task, if any, and exits
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    /// Whether a task was started and its outcome not yet taken.
    #[cfg(test)]
    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire)
    }
}

impl<T: Send + 'static> Drop for Committer<T> {
    fn drop(&mut self) {
        self.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn wait(c: &Committer<u32>) -> Outcome<u32> {
        for _ in 0..1000 {
            if let Some(o) = c.take() {
                return o;
            }
            thread::sleep(Duration::from_millis(1));
        }
        panic!("the task did not finish");
    }

    #[test]
    fn runs_one_task_at_a_time_and_hands_back_its_outcome() {
        let c = Committer::spawn("test-commit").expect("spawn");
        assert!(c.take().is_none());
        let (go, gate) = channel::<()>();
        assert!(c.start(move || {
            gate.recv().ok();
            7
        }));
        assert!(c.busy());
        assert!(!c.start(|| 8), "a second task while one is in flight");
        assert!(c.take().is_none(), "not finished yet");
        go.send(()).expect("gate");
        assert_eq!(wait(&c).expect("no panic"), 7);
        assert!(!c.busy());
        assert!(c.start(|| 9));
        assert_eq!(wait(&c).expect("no panic"), 9);
    }

    #[test]
    fn closing_waits_for_the_task_in_flight_and_hands_back_its_outcome() {
        let c = Committer::spawn("test-commit").expect("spawn");
        let (go, gate) = channel::<()>();
        assert!(c.start(move || {
            gate.recv().ok();
            5
        }));
        go.send(()).expect("gate");
        assert_eq!(c.close().expect("an outcome").expect("no panic"), 5);
    }

    #[test]
    fn a_panic_is_an_outcome_and_the_thread_goes_on() {
        let c = Committer::spawn("test-commit").expect("spawn");
        assert!(c.start(|| panic!("a bug")));
        assert!(wait(&c).is_err());
        assert!(c.start(|| 3));
        assert_eq!(wait(&c).expect("no panic"), 3);
    }

    #[test]
    fn the_socket_is_readable_once_a_task_finished() {
        let c = Committer::spawn("test-commit").expect("spawn");
        assert!(c.start(|| 1));
        // a blocking read of the loop's end returns once the byte is written
        let mut byte = [0u8; 1];
        let ready = c.ready.try_clone().expect("clone");
        ready.set_nonblocking(false).expect("blocking");
        assert_eq!((&ready).read(&mut byte).expect("read"), 1);
        ready.set_nonblocking(true).expect("non-blocking");
        assert_eq!(wait(&c).expect("no panic"), 1);
    }
}
