//! A pool of pre-created network namespaces.
//!
//! Creating a network namespace costs a few hundred microseconds of kernel
//! work, the largest single step of a sandbox create. A background thread
//! keeps up to `target` empty namespaces (owned by the host's user namespace,
//! `lo` down) ready; `take` hands one out instantly, or creates one inline
//! when the pool is empty (a burst larger than the pool). Namespaces are
//! never reused: a sandbox's namespace dies with it.
//!
//! The same pool, with a different producer, keeps *networked* namespaces
//! ready: each already wired to the node (veth, address, route) by
//! `warren-net`, so a networked create pays nothing for its network either.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use tracing::warn;

/// Makes one pooled item.
pub(crate) type Producer<T, E> = Arc<dyn Fn() -> Result<T, E> + Send + Sync>;

struct Shared<T, E> {
    ready: Mutex<(Vec<T>, bool)>,
    wake: Condvar,
    target: usize,
    make: Producer<T, E>,
}

pub(crate) struct Pool<T: Send + 'static, E: std::fmt::Display + 'static> {
    shared: Arc<Shared<T, E>>,
    thread: Option<JoinHandle<()>>,
}

/// The plain pool: empty namespaces with only `lo`.
pub(crate) type NetnsPool = Pool<OwnedFd, nix::errno::Errno>;

impl NetnsPool {
    /// Starts the refill thread; `target == 0` disables pooling.
    pub(crate) fn start(target: usize) -> Self {
        Pool::with_producer(target, Arc::new(warren_sys::clone::create_net_namespace))
    }
}

impl<T: Send + 'static, E: std::fmt::Display + 'static> Pool<T, E> {
    /// Starts a refill thread keeping `target` items made by `make` ready.
    pub(crate) fn with_producer(target: usize, make: Producer<T, E>) -> Self {
        let shared = Arc::new(Shared {
            ready: Mutex::new((Vec::with_capacity(target), false)),
            wake: Condvar::new(),
            target,
            make,
        });
        let thread = (target > 0).then(|| {
            let s = shared.clone();
            std::thread::Builder::new()
                .name("warren-netns-pool".into())
                .spawn(move || refill(&s))
                .expect("spawning a thread at startup")
        });
        Pool { shared, thread }
    }

    /// An item: from the pool if one is ready, else made inline.
    pub(crate) fn take(&self) -> Result<T, E> {
        let pooled = {
            let mut g = self.shared.ready.lock().expect("netns pool lock poisoned");
            let item = g.0.pop();
            self.shared.wake.notify_one();
            item
        };
        match pooled {
            Some(item) => Ok(item),
            None => (self.shared.make)(),
        }
    }

    /// Stops the refill thread and returns what was ready (so the caller
    /// can release it properly).
    pub(crate) fn drain(&mut self) -> Vec<T> {
        self.stop();
        std::mem::take(
            &mut self
                .shared
                .ready
                .lock()
                .expect("netns pool lock poisoned")
                .0,
        )
    }

    fn stop(&mut self) {
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

fn refill<T, E: std::fmt::Display>(s: &Shared<T, E>) {
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
        match (s.make)() {
            Ok(fd) => s.ready.lock().expect("netns pool lock poisoned").0.push(fd),
            Err(e) => {
                warn!(error = %e, "pre-creating a network namespace failed; pool paused 1s");
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        }
    }
}

impl<T: Send + 'static, E: std::fmt::Display + 'static> Drop for Pool<T, E> {
    fn drop(&mut self) {
        self.stop();
    }
}
