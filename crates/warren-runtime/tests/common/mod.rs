//! Shared fixture of the real-sandbox test binaries (`harness = false`: each
//! binary is also the sandbox init and calls `warren_init::run_if_init()`
//! first). One runtime per test process, under its own cgroup subtree
//! `warren-test-<tag>-<pid>` and data dir, both removed by [`teardown`].

#![allow(dead_code)]

use std::io::Read;
use std::sync::{Arc, OnceLock};

use anyhow::{anyhow, ensure, Context, Result};
use warren_runtime::{
    ExecExit, ExecIo, ExecSpec, ExitStatus, MainIo, NativeConfig, NativeRuntime, RootfsSpec,
    Runtime, SandboxId, SandboxInfo, SandboxSpec,
};

pub struct Fixture {
    pub rt: NativeRuntime,
    pub rootfs: RootfsSpec,
    pub env: Vec<String>,
    data: tempfile::TempDir,
}

static FIXTURE: OnceLock<Result<Arc<Fixture>, String>> = OnceLock::new();
static TAG: OnceLock<&'static str> = OnceLock::new();

fn cgroup_parent(tag: &str) -> String {
    format!("warren-test-{tag}-{}", std::process::id())
}

/// Sets the tag naming this binary's cgroup subtree; call first in `main`.
pub fn init(tag: &'static str) {
    let _ = TAG.set(tag);
}

pub fn fixture() -> Result<Arc<Fixture>> {
    FIXTURE
        .get_or_init(|| build().map(Arc::new).map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn build() -> Result<Fixture> {
    let tag = TAG.get().copied().unwrap_or("misc");
    let data = tempfile::Builder::new()
        .prefix(&format!("warren-rt-{tag}-"))
        .tempdir_in("/var/tmp")
        .context("tempdir")?;
    let store = warren_image::ImageStore::open(data.path().join("images"))?;
    let img = store.host_image()?;
    let mut cfg = NativeConfig::new(data.path().join("runtime"));
    cfg.cgroup_parent = cgroup_parent(tag);
    // Checkpoint tests may name another CRIU build.
    if let Some(criu) = std::env::var_os("WARREN_CRIU") {
        cfg.criu_binary = criu.into();
    }
    cfg.init_copy_dir = init_copy_dir(tag);
    let rt = NativeRuntime::new(cfg)?;
    Ok(Fixture {
        rt,
        rootfs: RootfsSpec {
            layers: img.layers.clone(),
            binds: img
                .binds
                .iter()
                .map(|b| warren_runtime::BindMount {
                    source: b.source.clone(),
                    target: b.target.clone(),
                    readonly: b.readonly,
                })
                .collect(),
        },
        env: img.config.env.clone(),
        data,
    })
}

/// This test binary's own copy of the init binary for checkpointable
/// sandboxes (outside the data directory: its path shows in their mount
/// tables), removed by [`teardown`].
pub fn init_copy_dir(tag: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/run/warren-test-{tag}-{}", std::process::id()))
}

/// Destroys what the fixture still runs and removes its data dir and
/// cgroup subtree; call last in `main`.
pub fn teardown() {
    if let Some(Ok(f)) = FIXTURE.get() {
        for id in f.rt.list() {
            let _ = f.rt.destroy(&id);
        }
        f.rt.flush_trash();
        let _ = std::fs::remove_dir_all(f.data.path());
    }
    let tag = TAG.get().copied().unwrap_or("misc");
    let _ = std::fs::remove_dir_all(init_copy_dir(tag));
    if let Ok(m) = warren_cgroup::CgroupManager::detect("/sys/fs/cgroup", &cgroup_parent(tag)) {
        let _ = m.destroy_parent();
    }
}

static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A sandbox that is destroyed when dropped.
pub struct Sb {
    pub f: Arc<Fixture>,
    pub id: SandboxId,
    pub info: SandboxInfo,
}

impl Drop for Sb {
    fn drop(&mut self) {
        let _ = self.f.rt.destroy(&self.id);
    }
}

impl Sb {
    /// An idle sandbox of the host image, edited by `edit`.
    pub fn with(prefix: &str, edit: impl FnOnce(&mut SandboxSpec)) -> Result<Sb> {
        let f = fixture()?;
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let id = SandboxId::new(format!("{prefix}-{}-{n}", std::process::id()))?;
        let mut spec = SandboxSpec::new(id.clone(), f.rootfs.clone());
        spec.env = f.env.clone();
        edit(&mut spec);
        let info = f.rt.create(&spec, MainIo::default())?;
        Ok(Sb { f, id, info })
    }

    /// An idle sandbox, in the checkpointable shape when this thread runs
    /// a [`trial_checkpointable`] trial.
    pub fn idle(prefix: &str) -> Result<Sb> {
        let checkpointable = CHECKPOINTABLE.with(|c| c.get());
        Self::with(prefix, |s| s.checkpointable = checkpointable)
    }

    /// Runs `spec`, returning (exit, stdout, stderr).
    pub fn run(&self, spec: ExecSpec) -> Result<(ExecExit, String, String)> {
        let mut e = self
            .f
            .rt
            .exec(&self.id, &spec, ExecIo::Pipes { stdin: false })?;
        let mut out = e.stdout.take().context("piped stdout")?;
        let mut err = e.stderr.take().context("piped stderr")?;
        let t = std::thread::spawn(move || {
            let mut v = Vec::new();
            err.read_to_end(&mut v).map(|_| v)
        });
        let mut o = Vec::new();
        out.read_to_end(&mut o)?;
        let errb = t.join().map_err(|_| anyhow!("stderr reader panicked"))??;
        Ok((
            e.wait()?,
            String::from_utf8_lossy(&o).into_owned(),
            String::from_utf8_lossy(&errb).into_owned(),
        ))
    }

    pub fn argv(&self, argv: &[&str]) -> Result<(ExecExit, String, String)> {
        self.run(ExecSpec::new(argv.iter().map(|s| s.to_string()).collect()))
    }

    /// Runs `sh -c script`.
    pub fn sh(&self, script: &str) -> Result<(ExecExit, String, String)> {
        self.argv(&["sh", "-c", script])
    }

    /// Runs `argv`, requiring exit code 0; returns stdout.
    pub fn ok(&self, argv: &[&str]) -> Result<String> {
        let (exit, out, err) = self.argv(argv)?;
        ensure!(
            exit.status == ExitStatus::Code(0),
            "{argv:?} ended {exit:?}; stdout: {out}; stderr: {err}"
        );
        Ok(out)
    }

    pub fn sh_ok(&self, script: &str) -> Result<String> {
        self.ok(&["sh", "-c", script])
    }

    pub fn python(&self, script: &str) -> Result<String> {
        self.ok(&["python3", "-c", script])
    }
}

thread_local! {
    /// Whether [`Sb::idle`] builds checkpointable sandboxes on this thread.
    static CHECKPOINTABLE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// [`trial`] again, with every [`Sb::idle`] sandbox in the checkpointable
/// shape (`SandboxSpec::checkpointable`); named `<name>_checkpointable`.
#[allow(dead_code)]
pub fn trial_checkpointable(name: &'static str, f: fn() -> Result<()>) -> libtest_mimic::Trial {
    libtest_mimic::Trial::test(format!("{name}_checkpointable"), move || {
        if !warren_testkit::require_root(name) {
            return Ok(());
        }
        CHECKPOINTABLE.with(|c| c.set(true));
        f().map_err(|e| libtest_mimic::Failed::from(format!("{e:#}")))
    })
}

/// Runs a libtest-mimic trial body only as root (skip with a reason, or fail
/// under CI).
pub fn trial(name: &'static str, f: fn() -> Result<()>) -> libtest_mimic::Trial {
    libtest_mimic::Trial::test(name, move || {
        if !warren_testkit::require_root(name) {
            return Ok(());
        }
        f().map_err(|e| libtest_mimic::Failed::from(format!("{e:#}")))
    })
}
