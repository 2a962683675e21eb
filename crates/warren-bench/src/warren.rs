//! Warren, driven in-process through the `warren-runtime` library API.

use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use nix::fcntl::OFlag;
use warren_image::ImageStore;
use warren_runtime::{
    ExecIo, ExecSpec, ExitStatus, MainIo, NativeConfig, NativeRuntime, RootfsSpec, Runtime,
    SandboxId, SandboxSpec,
};

use crate::timing::{read_first_byte, Timing, EXIT_TIMEOUT, FIRST_BYTE_TIMEOUT};
use crate::ImageChoice;

/// One measured `echo hi` run, from just before `create`.
#[derive(Clone, Copy, Debug)]
pub struct EchoRun {
    /// Until `create` returned (init is ready and the command started).
    pub created: Duration,
    pub timing: Timing,
}

/// A runtime plus the image every bench sandbox uses.
pub struct Warren {
    rt: NativeRuntime,
    rootfs: RootfsSpec,
    env: Vec<String>,
    /// Host uid/gid ranges the runtime has: one per live sandbox.
    id_slots: u32,
    // Kept open for as long as sandboxes use its layers.
    _store: ImageStore,
    /// Per-phase samples (µs) of measured echo cycles, in phase order.
    phases: std::sync::Mutex<Vec<(String, Vec<u64>)>>,
    /// Sandboxes get a network (the runtime must have one configured).
    network: bool,
}

impl Warren {
    /// Opens a runtime under `data/runtime` and an image store under
    /// `data/images`; imports `busybox_rootfs` unless the host image is chosen.
    pub fn open(data: &Path, image: ImageChoice, busybox_rootfs: &Path) -> Result<Self> {
        Self::open_with(data, image, busybox_rootfs, |_| {})
    }

    /// Like [`Warren::open`], with `adjust` applied to the runtime's
    /// configuration first (e.g. its own cgroup sub-tree and host id ranges,
    /// when another runtime shares the host).
    pub fn open_with(
        data: &Path,
        image: ImageChoice,
        busybox_rootfs: &Path,
        adjust: impl FnOnce(&mut NativeConfig),
    ) -> Result<Self> {
        let mut config = NativeConfig::new(data.join("runtime"));
        adjust(&mut config);
        let id_slots = config.id_slots;
        let rt = NativeRuntime::new(config).context("open warren runtime")?;
        let store = ImageStore::open(data.join("images")).context("open image store")?;
        let img = match image {
            ImageChoice::Busybox => store
                .import_dir(busybox_rootfs, "bench-busybox")
                .context("import busybox rootfs")?,
            ImageChoice::Host => store.host_image().context("host image")?,
            ImageChoice::Pulled => pull_busybox(data, busybox_rootfs)?,
        };
        let rootfs = warren_node::rootfs_of(&img);
        Ok(Self {
            rt,
            rootfs,
            env: img.config.env.clone(),
            phases: std::sync::Mutex::new(Vec::new()),
            id_slots,
            _store: store,
            network: false,
        })
    }

    /// The runtime itself (for benches of its non-trait API).
    pub fn runtime(&self) -> &NativeRuntime {
        &self.rt
    }

    /// Networked sandboxes from now on (see `create --network`).
    pub fn set_network(&mut self, on: bool) {
        self.network = on;
    }

    /// The layers the sandboxes stack (lowest first).
    pub fn layer_count(&self) -> usize {
        self.rootfs.layers.len()
    }

    pub fn spec(&self, id: &SandboxId, command: Option<&[&str]>) -> SandboxSpec {
        let mut spec = SandboxSpec::new(id.clone(), self.rootfs.clone());
        spec.command = command.map(|c| c.iter().map(|s| s.to_string()).collect());
        spec.env = self.env.clone();
        if self.network {
            spec.network = warren_runtime::NetworkSpec::enabled();
        }
        spec
    }

    /// One `echo hi` sandbox: create → first byte → exit → destroy.
    pub fn echo_cycle(&self, name: &str) -> Result<Timing> {
        self.echo_run(name).map(|r| r.timing)
    }

    /// [`Warren::echo_cycle`], also reporting when `create` returned.
    pub fn echo_run(&self, name: &str) -> Result<EchoRun> {
        let id = SandboxId::new(name.to_owned()).context("sandbox id")?;
        let spec = self.spec(&id, Some(&["/bin/echo", "hi"]));

        let t0 = Instant::now();
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).context("pipe")?;
        let res = self
            .rt
            .create(
                &spec,
                MainIo {
                    stdin: None,
                    stdout: Some(w),
                    stderr: None,
                    log_capacity: None,
                },
            )
            .context("create")
            .and_then(|info| {
                let mut phases = info.phases;
                let created = t0.elapsed();
                let mut out = File::from(r);
                let byte = read_first_byte(&mut out, FIRST_BYTE_TIMEOUT)?;
                let first_byte = t0.elapsed();
                ensure!(byte == b'h', "unexpected first byte {byte:#04x}");
                let exit = self.rt.wait(&id, Some(EXIT_TIMEOUT)).context("wait")?;
                let exit = exit.with_context(|| format!("did not exit within {EXIT_TIMEOUT:?}"))?;
                let exited = t0.elapsed();
                ensure!(exit.code() == Some(0), "echo ended with {exit:?}");
                self.rt.destroy(&id).context("destroy")?;
                let cycle = t0.elapsed();
                let us = |d: Duration| d.as_micros() as u64;
                phases.push(("after:first_byte".into(), us(first_byte - created)));
                phases.push(("after:exit_seen".into(), us(exited - first_byte)));
                phases.push(("after:destroy".into(), us(cycle - exited)));
                self.record_phases(phases);
                Ok(EchoRun {
                    created,
                    timing: Timing { first_byte, cycle },
                })
            });
        if res.is_err() {
            let _ = self.rt.destroy(&id);
        }
        res.with_context(|| format!("warren sandbox {name}"))
    }

    fn record_phases(&self, phases: Vec<(String, u64)>) {
        let mut all = self.phases.lock().expect("phase lock");
        for (name, us) in phases {
            match all.iter_mut().find(|(n, _)| *n == name) {
                Some((_, v)) => v.push(us),
                None => all.push((name, vec![us])),
            }
        }
    }

    /// Forgets phase samples (after warm-up).
    pub fn reset_phases(&self) {
        self.phases.lock().expect("phase lock").clear();
    }

    /// Prints where a create → first byte → exit → destroy cycle spends its
    /// time: the runtime's own phases (`node:*`, `init:*`) and what follows.
    pub fn print_phases(&self) {
        let all = self.phases.lock().expect("phase lock");
        if all.is_empty() {
            return;
        }
        println!();
        println!("warren cycle breakdown (µs; node:* = host side, init:* = inside init, after:* = after create returned)");
        println!("{:<22} {:>8} {:>8}", "phase", "p50", "mean");
        for (name, v) in all.iter() {
            let mut s = v.clone();
            s.sort_unstable();
            let p50 = s[s.len() / 2];
            let mean = s.iter().sum::<u64>() / s.len() as u64;
            println!("{name:<22} {p50:>8} {mean:>8}");
        }
    }

    /// Creates a long-lived sandbox (idle when `command` is `None`), owned by
    /// `set` so it is destroyed even if the caller bails.
    pub fn create_into(
        &self,
        set: &mut SandboxSet<'_>,
        name: &str,
        command: Option<&[&str]>,
    ) -> Result<SandboxId> {
        let id = SandboxId::new(name.to_owned()).context("sandbox id")?;
        let spec = self.spec(&id, command);
        // Owned before create: a half-created sandbox is cleaned up too
        // (destroy is idempotent).
        set.ids.push(id.clone());
        let io = MainIo {
            stdin: None,
            stdout: None,
            stderr: None,
            log_capacity: None,
        };
        self.rt
            .create(&spec, io)
            .with_context(|| format!("create warren sandbox {name}"))?;
        Ok(id)
    }

    /// Exec `/bin/true`: spawn → exit status received.
    pub fn exec_true(&self, id: &SandboxId) -> Result<Duration> {
        let t0 = Instant::now();
        let mut proc = self
            .rt
            .exec(id, &ExecSpec::new(vec!["/bin/true".into()]), ExecIo::Null)
            .context("warren exec")?;
        let exit = proc.wait().context("warren exec wait")?;
        let elapsed = t0.elapsed();
        match exit.status {
            ExitStatus::Code(0) => Ok(elapsed),
            ExitStatus::Code(c) => bail!("warren exec /bin/true exited with {c}"),
            ExitStatus::Signal(s) => bail!("warren exec /bin/true killed by signal {s}"),
        }
    }

    /// True while the sandbox's main process has not ended.
    pub fn is_running(&self, id: &SandboxId) -> Result<bool> {
        Ok(self.rt.wait(id, Some(Duration::ZERO))?.is_none())
    }

    /// The runtime's host id-range slots: (total, in use). Each live sandbox
    /// holds one.
    pub fn uid_slots(&self) -> Option<(u64, u64)> {
        Some((u64::from(self.id_slots), self.rt.list().len() as u64))
    }
}

/// Sandboxes destroyed on drop (best effort), or explicitly with timing.
pub struct SandboxSet<'a> {
    warren: &'a Warren,
    ids: Vec<SandboxId>,
}

impl<'a> SandboxSet<'a> {
    pub fn new(warren: &'a Warren) -> Self {
        Self {
            warren,
            ids: Vec::new(),
        }
    }

    pub fn ids(&self) -> &[SandboxId] {
        &self.ids
    }

    /// Destroys all, newest first; returns how many failed and the first error.
    pub fn destroy_all(&mut self) -> (usize, Option<anyhow::Error>) {
        let mut failed = 0;
        let mut first_err = None;
        while let Some(id) = self.ids.pop() {
            if let Err(e) = self.warren.rt.destroy(&id) {
                failed += 1;
                first_err.get_or_insert_with(|| anyhow::Error::new(e).context("destroy"));
            }
        }
        (failed, first_err)
    }
}

impl Drop for SandboxSet<'_> {
    fn drop(&mut self) {
        if self.ids.is_empty() {
            return;
        }
        let n = self.ids.len();
        let (failed, err) = self.destroy_all();
        if let Some(err) = err {
            eprintln!("warning: {failed} of {n} sandboxes failed to destroy: {err:#}");
        }
    }
}

/// Packs `rootfs` as a three-layer OCI image (the rootfs, then two small
/// layers on top, so the overlay stacks several lowers like a real image),
/// pushes it to a loopback `docker-registry` and pulls it into the store
/// under `data/images` with Warren's puller.
fn pull_busybox(data: &Path, rootfs: &Path) -> Result<warren_image::Image> {
    use warren_testkit::registry::{Compress, LayoutBuilder, Registry, TarBuilder, TestConfig};
    let registry = Registry::start().context("start docker-registry (scripts/install-deps.sh)")?;
    let mut base = tar::Builder::new(Vec::new());
    base.follow_symlinks(false);
    base.append_dir_all(".", rootfs)
        .context("pack the busybox rootfs")?;
    let base = base.into_inner().context("pack the busybox rootfs")?;
    let mut layout = LayoutBuilder::new(&data.join("pulled-layout"))?;
    let layers = vec![
        layout.layer(&base, Compress::Gzip)?,
        layout.layer(
            &TarBuilder::new()
                .dir("opt", 0o755)
                .file("opt/one", 0o644, b"1")
                .finish(),
            Compress::Gzip,
        )?,
        layout.layer(
            &TarBuilder::new()
                .dir("opt", 0o755)
                .file("opt/two", 0o644, b"2")
                .finish(),
            Compress::Gzip,
        )?,
    ];
    layout.image(
        "1",
        &layers,
        &TestConfig {
            env: vec!["PATH=/bin:/usr/bin".into()],
            ..Default::default()
        },
    )?;
    registry.push(layout.dir(), "1", "bench/busybox:1")?;
    let store =
        std::sync::Arc::new(ImageStore::open(data.join("images")).context("open image store")?);
    let mut cfg = warren_registry::RegistryConfig::default();
    cfg.registries.insert(
        registry.host(),
        warren_registry::RegistryEntry {
            insecure: true,
            auth: None,
        },
    );
    let puller = warren_registry::Puller::new(store, cfg)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let reference = format!("{}/bench/busybox:1", registry.host());
    let img = rt.block_on(puller.pull(&reference, |_| {}))?;
    Ok(img)
}
