//! Deferred teardown of destroyed sandboxes: their directories and their
//! network leases.
//!
//! `destroy` renames a sandbox's state directory into `trash/` (one atomic
//! rename: from then on nothing refers to it) and hands it to this reaper
//! thread, which deletes it. Deleting even a small tree costs about a
//! millisecond on filesystems mounted with online discard, and much more
//! for a big writable layer (`node_modules`), so it stays off the destroy
//! path. Whatever is still in `trash/` at startup is deleted then.
//!
//! Deleting a sandbox's veth waits for the kernel to unregister the device
//! (RCU grace periods: 10-30 ms on a busy 2-core machine), so leases are
//! released here too; the address returns to the pool afterwards.

use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use tracing::warn;

/// Work for the reaper thread.
pub(crate) enum Job {
    Dir(PathBuf),
    Run(Box<dyn FnOnce() + Send>),
}

pub(crate) struct Reaper {
    tx: Option<Sender<Job>>,
    pending: Arc<(Mutex<usize>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Reaper {
    pub(crate) fn start() -> Self {
        let (tx, rx) = channel::<Job>();
        let pending = Arc::new((Mutex::new(0usize), Condvar::new()));
        let p = pending.clone();
        let thread = std::thread::Builder::new()
            .name("warren-trash".into())
            .spawn(move || run(rx, &p))
            .expect("spawning a thread at startup");
        Reaper {
            tx: Some(tx),
            pending,
            thread: Some(thread),
        }
    }

    /// Queues `dir` (already renamed into the trash) for deletion.
    pub(crate) fn delete(&self, dir: PathBuf) {
        self.submit(Job::Dir(dir));
    }

    /// Queues `f` (a lease's teardown).
    pub(crate) fn run(&self, f: impl FnOnce() + Send + 'static) {
        self.submit(Job::Run(Box::new(f)));
    }

    fn submit(&self, job: Job) {
        *self.pending.0.lock().expect("trash lock poisoned") += 1;
        let rejected = match self.tx.as_ref() {
            Some(tx) => tx.send(job).err().map(|e| e.0),
            None => Some(job),
        };
        if let Some(job) = rejected {
            perform(job);
            self.done();
        }
    }

    fn done(&self) {
        let mut n = self.pending.0.lock().expect("trash lock poisoned");
        *n = n.saturating_sub(1);
        self.pending.1.notify_all();
    }

    /// Blocks until everything queued so far is done.
    pub(crate) fn flush(&self) {
        let mut n = self.pending.0.lock().expect("trash lock poisoned");
        while *n > 0 {
            n = self.pending.1.wait(n).expect("trash lock poisoned");
        }
    }
}

fn remove(dir: &PathBuf) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            warn!(dir = %dir.display(), error = %e, "deleting a destroyed sandbox's directory failed");
        }
    }
}

fn perform(job: Job) {
    match job {
        Job::Dir(dir) => remove(&dir),
        Job::Run(f) => f(),
    }
}

fn run(rx: Receiver<Job>, pending: &(Mutex<usize>, Condvar)) {
    for job in rx {
        perform(job);
        let mut n = pending.0.lock().expect("trash lock poisoned");
        *n = n.saturating_sub(1);
        pending.1.notify_all();
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        // Closing the channel ends the thread after it drained the queue.
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
