//! A pool of pre-created network namespaces.
//!
//! Creating a network namespace costs a few hundred microseconds of kernel
//! work, the largest single step of a sandbox create. A background thread
//! keeps up to `target` empty namespaces (owned by the host's user namespace,
//! `lo` down) ready; `take` hands one out instantly, or creates one inline
//! when the pool is empty (a burst larger than the pool). Namespaces are
//! never reused: a sandbox's namespace dies with it.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use tracing::warn;

struct Shared {
    ready: Mutex<(Vec<OwnedFd>, bool)>,
    wake: Condvar,
    target: usize,
}

pub(crate) struct NetnsPool {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl NetnsPool {
    /// Starts the refill thread; `target == 0` disables pooling.
    pub(crate) fn start(target: usize) -> Self {
        let shared = Arc::new(Shared {
            ready: Mutex::new((Vec::with_capacity(target), false)),
            wake: Condvar::new(),
            target,
        });
        let thread = (target > 0).then(|| {
            let s = shared.clone();
            std::thread::Builder::new()
                .name("warren-netns-pool".into())
                .spawn(move || refill(&s))
                .expect("spawning a thread at startup")
        });
        NetnsPool { shared, thread }
    }

    /// A fresh network namespace: from the pool if one is ready.
    pub(crate) fn take(&self) -> warren_sys::Result<OwnedFd> {
        let pooled = {
            let mut g = self.shared.ready.lock().expect("netns pool lock poisoned");
            let fd = g.0.pop();
            self.shared.wake.notify_one();
            fd
        };
        match pooled {
            Some(fd) => Ok(fd),
            None => warren_sys::clone::create_net_namespace(),
        }
    }
}

fn refill(s: &Shared) {
    loop {
        {
            let mut g = s.ready.lock().expect("netns pool lock poisoned");
            while g.0.len() >= s.target && !g.1 {
                g = s.wake.wait(g).expect("netns pool lock poisoned");
            }
            if g.1 {
                return;
            }
        }
        match warren_sys::clone::create_net_namespace() {
            Ok(fd) => s.ready.lock().expect("netns pool lock poisoned").0.push(fd),
            Err(e) => {
                warn!(error = %e, "pre-creating a network namespace failed; pool paused 1s");
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        }
    }
}

impl Drop for NetnsPool {
    fn drop(&mut self) {
        self.shared
            .ready
            .lock()
            .expect("netns pool lock poisoned")
            .1 = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
