//! The HTTP API benchmarks (`api-create`, `api-exec`, `api-throughput`): a
//! real `warren serve` child process driven through `warren-client`, next to
//! an in-process runtime measured the same way as `create` / `exec`, so the
//! report can state the API's overhead over the runtime.
//!
//! What it must not do: leave the server running, or sandboxes, cgroups or
//! the data directory behind. [`ApiServer`] ends every sandbox through the API
//! before stopping the server (sandboxes outlive `warren serve` by design),
//! stops it with SIGTERM and waits for it, then checks that no sandbox cgroup
//! is left; [`LocalWarren`] removes its own cgroup sub-tree.

pub mod create;
pub mod exec;
pub mod fairness;
pub mod files;
pub mod memory;
pub mod throughput;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use warren_cgroup::CgroupManager;
use warren_client::Client;
use warren_image::ImageStore;
use warren_proto::api::SandboxState;

use crate::warren::Warren;
use crate::ImageChoice;

/// The image both the server's and the in-process sandboxes run: the
/// busybox rootfs `create` uses, imported under this name.
pub const IMAGE: &str = "bench-busybox";
/// Where cgroup hierarchies are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The cgroup sub-tree `warren serve` puts its sandboxes in (the server's
/// default; `warren serve` has no option to change it).
/// First host id of the in-process runtime's ranges: above the server's
/// (which start at 2^30 and span 16,384 × 65,536 = 2^30 ids), so the two
/// runtimes never hand out the same host ids.
const LOCAL_ID_BASE: u32 = 1 << 31;
/// How long to wait for another runtime's sandboxes to leave the server's
/// cgroup sub-tree before giving up.
/// How many warning/error lines of the server log are shown.
const LOG_LINES_SHOWN: usize = 10;
/// Bound on the server coming up (healthy and the admin token written).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on the server exiting after SIGTERM (then SIGKILL).
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on one plain-HTTP probe (`/healthz`, `/metrics`).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the API's `wait` may hold a sandbox that should end at once.
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Lifetime asked for long-lived (idle) sandboxes; they are terminated
/// explicitly long before.
pub const IDLE_LIFETIME_SECS: u64 = 3600;

/// `VmHWM` (peak resident set) of a `/proc/*/status` file, in KiB.
pub fn vm_hwm_kib(status: &str) -> Option<u64> {
    std::fs::read_to_string(status)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

pub use warren_testkit::wait_until;

/// The host's load averages, for the report header.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// A `warren serve` child process with its own data directory, plus a client
/// holding the admin token and the tokio runtime the client runs on.
pub struct ApiServer {
    child: Option<Child>,
    dir: PathBuf,
    port: u16,
    client: Client,
    rt: tokio::runtime::Runtime,
}

impl ApiServer {
    /// Imports `busybox_rootfs` as [`IMAGE`] into `data/server/images`, then
    /// starts `warren --data-dir data/server serve` on a free loopback port
    /// and waits (bounded) until it is healthy and has written its token.
    pub fn start(data: &Path, busybox_rootfs: &Path, rt: tokio::runtime::Runtime) -> Result<Self> {
        // Comparable with the earlier figures; the network share of a
        // create is measured on its own (BENCHMARKS.md).
        Self::start_with(data, busybox_rootfs, rt, &["--no-network", "--no-relay"])
    }

    /// [`ApiServer::start`] with other `warren serve` flags than
    /// `--no-network --no-relay` (`--listen` is always set).
    pub fn start_with(
        data: &Path,
        busybox_rootfs: &Path,
        rt: tokio::runtime::Runtime,
        serve_args: &[&str],
    ) -> Result<Self> {
        let bin = std::env::current_exe()
            .context("locate the bench binary")?
            .with_file_name("warren");
        ensure!(
            bin.is_file(),
            "{} not found: build it with `cargo build --release -p warren-cli -p warren-init` \
             (bench/run does)",
            bin.display()
        );
        if !bin.with_file_name("warren-init").is_file() {
            eprintln!(
                "note: no warren-init next to {}; the server will run itself as init (slower)",
                bin.display()
            );
        }

        let dir = data.join("server");
        std::fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
        {
            let store = ImageStore::open(dir.join("images")).context("open the server's images")?;
            store
                .import_dir(busybox_rootfs, IMAGE)
                .context("import the busybox rootfs for the server")?;
        }

        let port = {
            let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("bind a free port")?;
            l.local_addr().context("local address")?.port()
        };
        let log = std::fs::File::create(dir.join("server.log")).context("create server.log")?;
        let child = {
            use std::os::unix::process::CommandExt;
            Command::new(&bin)
                .arg("--data-dir")
                .arg(&dir)
                .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
                .args(serve_args)
                .stdin(Stdio::null())
                .stdout(log.try_clone().context("clone the log fd")?)
                .stderr(log)
                // Its own process group: a Ctrl-C at the terminal reaches
                // only the bench, which then ends the sandboxes through the
                // API before stopping the server.
                .process_group(0)
                .spawn()
                .with_context(|| format!("start {}", bin.display()))?
        };
        let url = format!("http://127.0.0.1:{port}");
        let mut server = Self {
            child: Some(child),
            dir,
            port,
            // Replaced below once the token exists.
            client: Client::new(&url, "").context("API client")?,
            rt,
        };
        let token_path = server.dir.join("admin-token");
        let mut exited = false;
        let ready = wait_until(READY_TIMEOUT, || {
            exited = server.exited();
            exited || (healthy(port) && token_path.exists())
        });
        if exited || !ready {
            bail!(
                "the server {} (log below)\n{}",
                if exited {
                    "exited during start-up"
                } else {
                    "did not become healthy in time"
                },
                server.log_tail()
            );
        }
        let token = std::fs::read_to_string(&token_path)
            .with_context(|| format!("read {}", token_path.display()))?;
        server.client = Client::new(&url, token.trim()).context("API client")?;
        eprintln!("server: {} (pid {})", url, server.pid());
        Ok(server)
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The server process's peak resident memory so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        vm_hwm_kib(&format!("/proc/{pid}/status"))
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    fn exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(Some(_))),
            None => true,
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Prints the server log's WARN and ERROR lines (the first few) to
    /// stderr: the API hides internal details from clients by design.
    fn report_log_problems(&self) {
        let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let bad: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .collect();
        if bad.is_empty() {
            return;
        }
        eprintln!("server log: {} warning/error lines; the first:", bad.len());
        for l in bad.iter().take(LOG_LINES_SHOWN) {
            eprintln!("  {l}");
        }
    }

    /// The server's Prometheus text (`GET /metrics`).
    pub fn metrics(&self) -> Result<Metrics> {
        let text = http_get(self.port, "/metrics")?;
        Ok(Metrics(text))
    }

    /// Ends every sandbox still running through the API; returns the ids
    /// of all the server's sandboxes and how many had to be ended.
    pub fn end_all(&self) -> Result<(Vec<String>, usize)> {
        self.block_on(async {
            let all = self
                .client
                .list_all_sandboxes(&Default::default())
                .await
                .context("list sandboxes")?;
            let mut ended = 0;
            for sb in &all {
                if sb.state != SandboxState::Terminated {
                    self.client
                        .terminate_sandbox(&sb.id)
                        .await
                        .with_context(|| format!("terminate {}", sb.id))?;
                    ended += 1;
                }
            }
            Ok((all.into_iter().map(|sb| sb.id).collect(), ended))
        })
    }

    /// Ends all sandboxes, stops the server (SIGTERM, waited for), and checks
    /// that none of its sandboxes left a cgroup (other runtimes' sandboxes
    /// under the same parent are not counted).
    pub fn shutdown(mut self) -> Result<()> {
        let ended = self.end_all();
        let stopped = self.stop();
        let (ids, ended) = ended?;
        if ended > 0 {
            eprintln!("cleanup: terminated {ended} sandbox(es) still running");
        }
        self.report_log_problems();
        stopped?;
        let left: Vec<String> = server_cgroups(&self.dir)?
            .into_iter()
            .filter(|name| ids.contains(name))
            .collect();
        ensure!(
            left.is_empty(),
            "{} of the server's sandboxes left a cgroup under '{}' after it \
             stopped, e.g. {}",
            left.len(),
            server_cgroup_parent(&self.dir),
            left[0]
        );
        Ok(())
    }

    /// SIGTERM, then a bounded wait; SIGKILL if it does not exit.
    fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = Pid::from_raw(i32::try_from(child.id()).context("server pid")?);
        let _ = kill(pid, Signal::SIGTERM);
        let mut status = None;
        wait_until(STOP_TIMEOUT, || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        match status {
            Some(s) if s.success() => Ok(()),
            Some(s) => bail!(
                "the server exited with {s} on SIGTERM (log below)\n{}",
                self.log_tail()
            ),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the server did not exit within {STOP_TIMEOUT:?} of SIGTERM; killed it")
            }
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if self.child.is_none() {
            return;
        }
        // An early return (error, Ctrl-C): still end every sandbox first.
        if let Err(e) = self.end_all() {
            eprintln!("warning: ending the server's sandboxes failed: {e:#}");
        }
        self.report_log_problems();
        if let Err(e) = self.stop() {
            eprintln!("warning: {e:#}");
        }
    }
}

/// Sandbox cgroups under the server's parent.
/// The cgroup subtree `warren serve` uses for a data dir (the runtime's
/// default, derived from its data directory).
fn server_cgroup_parent(server_dir: &Path) -> String {
    warren_runtime::NativeConfig::new(server_dir.join("runtime")).cgroup_parent
}

fn server_cgroups(server_dir: &Path) -> Result<Vec<String>> {
    CgroupManager::detect(CGROUP_ROOT, &server_cgroup_parent(server_dir))
        .context("detect cgroups")?
        .list()
        .context("list the server's cgroups")
}

/// `GET path` over plain HTTP/1.0 (one connection, read to the end).
fn http_get(port: u16, path: &str) -> Result<String> {
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).context("connect")?;
    s.set_read_timeout(Some(PROBE_TIMEOUT))?;
    s.set_write_timeout(Some(PROBE_TIMEOUT))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .context("send request")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).context("read response")?;
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    ensure!(
        head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
        "GET {path}: {}",
        head.lines().next().unwrap_or_default()
    );
    Ok(body.to_owned())
}

fn healthy(port: u16) -> bool {
    http_get(port, "/healthz").is_ok()
}

/// A `/metrics` snapshot.
pub struct Metrics(String);

impl Metrics {
    /// The value of the sample whose name and labels are exactly `key`.
    fn value(&self, key: &str) -> Option<f64> {
        self.0.lines().find_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k == key).then(|| v.parse().ok()).flatten()
        })
    }

    /// (sum seconds, count) of a histogram; `labels` as in the exposition
    /// (`method="POST",route="/v1/sandboxes",status="201"`) or empty.
    fn histogram(&self, name: &str, labels: &str) -> (f64, f64) {
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        (
            self.value(&format!("{name}_sum{braces}")).unwrap_or(0.0),
            self.value(&format!("{name}_count{braces}")).unwrap_or(0.0),
        )
    }
}

/// Mean (ms) of a server histogram between two snapshots, `None` if it
/// recorded nothing in between.
pub fn mean_between(before: &Metrics, after: &Metrics, name: &str, labels: &str) -> Option<f64> {
    let (s0, n0) = before.histogram(name, labels);
    let (s1, n1) = after.histogram(name, labels);
    let n = n1 - n0;
    (n > 0.0).then(|| (s1 - s0) / n * 1e3)
}

/// Server-side histogram of the request latency of one route and status.
pub const HTTP_HISTOGRAM: &str = "warren_http_request_duration_seconds";
/// Server-side histogram of `supervisor.start` (node create + mark running).
pub const CREATE_HISTOGRAM: &str = "warren_sandbox_create_seconds";

pub fn route_labels(method: &str, route: &str, status: u16) -> String {
    format!("method=\"{method}\",route=\"{route}\",status=\"{status}\"")
}

/// The in-process runtime used for comparison, with its own cgroup sub-tree
/// (`warren-bench-PID`, so the server's start-up recovery, which claims
/// everything under `warren`, cannot touch it) and its own host id ranges.
/// The sub-tree is removed on drop (the runtime tries that itself and
/// ignores failures; this reports them).
pub struct LocalWarren {
    warren: Option<Warren>,
    parent: String,
}

impl LocalWarren {
    pub fn open(data: &Path, busybox_rootfs: &Path) -> Result<Self> {
        let parent = format!("warren-bench-{}", std::process::id());
        let warren = Warren::open_with(data, ImageChoice::Busybox, busybox_rootfs, |cfg| {
            cfg.cgroup_parent = parent.clone();
            cfg.id_base = LOCAL_ID_BASE;
        })?;
        Ok(Self {
            warren: Some(warren),
            parent,
        })
    }

    pub fn warren(&self) -> &Warren {
        self.warren.as_ref().expect("set until drop")
    }
}

impl Drop for LocalWarren {
    fn drop(&mut self) {
        // Its sandboxes are destroyed by their owners before this point.
        drop(self.warren.take());
        let res = CgroupManager::detect(CGROUP_ROOT, &self.parent).and_then(|m| m.destroy_parent());
        if let Err(e) = res {
            eprintln!(
                "warning: cgroup sub-tree {} not removed: {e:#}",
                self.parent
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# TYPE warren_sandbox_create_seconds histogram
warren_sandbox_create_seconds_bucket{le=\"+Inf\"} 4
warren_sandbox_create_seconds_sum 0.02
warren_sandbox_create_seconds_count 4
warren_http_request_duration_seconds_sum{method=\"POST\",route=\"/v1/sandboxes\",status=\"201\"} 0.03
warren_http_request_duration_seconds_count{method=\"POST\",route=\"/v1/sandboxes\",status=\"201\"} 4
";

    #[test]
    fn histogram_means_between_snapshots() {
        let before = Metrics(String::new());
        let after = Metrics(TEXT.into());
        let m = mean_between(&before, &after, CREATE_HISTOGRAM, "").expect("mean");
        assert!((m - 5.0).abs() < 1e-9, "{m}");
        let labels = route_labels("POST", "/v1/sandboxes", 201);
        let m = mean_between(&before, &after, HTTP_HISTOGRAM, &labels).expect("mean");
        assert!((m - 7.5).abs() < 1e-9, "{m}");
        assert_eq!(mean_between(&after, &after, CREATE_HISTOGRAM, ""), None);
        let other = route_labels("GET", "/v1/sandboxes", 200);
        assert_eq!(mean_between(&before, &after, HTTP_HISTOGRAM, &other), None);
    }
}
