//! Peer runtimes, driven through their CLIs exactly as a user would:
//! `crun run` / `runc run` on an OCI bundle, and `bwrap` on the same rootfs.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use serde_json::{json, Value};

use crate::timing::{read_first_byte, Timing, FIRST_BYTE_TIMEOUT};

/// Which runtimes a comparison includes.
#[derive(Args, Clone, Debug)]
pub struct PeerArgs {
    /// Measure only the peers (crun, runc, bwrap), not Warren.
    #[arg(long, conflicts_with = "no_peers")]
    pub peers_only: bool,
    /// Measure only Warren.
    #[arg(long)]
    pub no_peers: bool,
}

impl PeerArgs {
    pub fn warren(&self) -> bool {
        !self.peers_only
    }

    /// The binary for peer `name`, or `None` (with the reason) when peers are
    /// off or it is not installed.
    pub fn find(&self, name: &str) -> Result<PathBuf, String> {
        if self.no_peers {
            return Err("skipped (--no-peers)".into());
        }
        which(name)
            .ok_or_else(|| format!("{name} not installed (scripts/install-deps.sh installs it)"))
    }

    pub fn wants_crun(&self) -> bool {
        self.find("crun").is_ok()
    }
}

/// `PATH` lookup, as a shell would do it.
pub fn which(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// First line of `BIN --version`, for the report.
pub fn version(bin: &Path) -> String {
    Command::new(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown version".into())
}

/// OCI bundles sharing one rootfs directory.
pub struct Bundles {
    /// Runs `/bin/echo hi`.
    pub echo: PathBuf,
    /// Runs `/bin/sleep 1000` (target for exec).
    pub sleep: PathBuf,
}

/// Writes the bundles under `dir`, starting from the default config that
/// `SPEC_TOOL spec` (runc, or crun when runc is absent) generates.
pub fn write_bundles(spec_tool: &Path, dir: &Path, rootfs: &Path) -> Result<Bundles> {
    let base_dir = dir.join("base");
    std::fs::create_dir_all(&base_dir)?;
    let out = Command::new(spec_tool)
        .arg("spec")
        .arg("--bundle")
        .arg(&base_dir)
        .output()
        .with_context(|| format!("run {} spec", spec_tool.display()))?;
    ensure!(
        out.status.success(),
        "{} spec failed: {}",
        spec_tool.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let base: Value = serde_json::from_slice(&std::fs::read(base_dir.join("config.json"))?)
        .context("parse generated config.json")?;

    let write = |name: &str, args: &[&str]| -> Result<PathBuf> {
        let bundle = dir.join(name);
        std::fs::create_dir_all(&bundle)?;
        let config = edit_config(base.clone(), args, rootfs)?;
        std::fs::write(
            bundle.join("config.json"),
            serde_json::to_vec_pretty(&config)?,
        )?;
        Ok(bundle)
    };
    Ok(Bundles {
        echo: write("echo", &["/bin/echo", "hi"])?,
        sleep: write("sleep", &["/bin/sleep", "1000"])?,
    })
}

/// Sets the command, turns off the terminal, and points `root` at the shared
/// (writable) rootfs by absolute path.
pub fn edit_config(mut config: Value, args: &[&str], rootfs: &Path) -> Result<Value> {
    let process = config
        .get_mut("process")
        .and_then(Value::as_object_mut)
        .context("config.json has no process object")?;
    process.insert("args".into(), json!(args));
    process.insert("terminal".into(), json!(false));
    let rootfs = rootfs.to_str().context("rootfs path is not UTF-8")?;
    config
        .as_object_mut()
        .context("config.json is not an object")?
        .insert("root".into(), json!({ "path": rootfs, "readonly": false }));
    Ok(config)
}

/// crun or runc, with its state kept under the bench's data dir.
pub struct OciPeer {
    pub name: &'static str,
    bin: PathBuf,
    state_root: PathBuf,
    log_dir: PathBuf,
}

impl OciPeer {
    pub fn new(name: &'static str, bin: PathBuf, data: &Path) -> Result<Self> {
        let state_root = data.join("state").join(name);
        let log_dir = data.join("logs");
        std::fs::create_dir_all(&state_root)?;
        std::fs::create_dir_all(&log_dir)?;
        Ok(Self {
            name,
            bin,
            state_root,
            log_dir,
        })
    }

    pub fn bin(&self) -> &Path {
        &self.bin
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--root").arg(&self.state_root);
        cmd
    }

    /// `run --bundle B ID` in the foreground: start → first byte → exit.
    /// `run` deletes the container when its process exits, so the cycle ends
    /// when the CLI exits.
    pub fn run_cycle(&self, bundle: &Path, id: &str) -> Result<Timing> {
        let mut cmd = self.command();
        cmd.arg("run").arg("--bundle").arg(bundle).arg(id);
        let res = first_byte_then_exit(cmd);
        if res.is_err() {
            self.delete(id);
        }
        res.with_context(|| format!("{} run {id}", self.name))
    }

    /// `run -d`: returns once the container's process is running. Its stdio
    /// must not be a pipe we wait on (the container keeps it open), so stdout
    /// is /dev/null and stderr goes to a log file.
    pub fn start_detached(&self, bundle: &Path, id: &str) -> Result<Container<'_>> {
        let log_path = self.log_dir.join(format!("{id}.stderr"));
        let log = File::create(&log_path)?;
        let status = self
            .command()
            .arg("run")
            .arg("--detach")
            .arg("--bundle")
            .arg(bundle)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .status()
            .with_context(|| format!("spawn {}", self.bin.display()))?;
        let container = Container {
            peer: self,
            id: id.to_owned(),
        };
        if !status.success() {
            let err = std::fs::read_to_string(&log_path).unwrap_or_default();
            bail!(
                "{} run --detach {id} failed ({status}): {}",
                self.name,
                err.trim()
            );
        }
        Ok(container)
    }

    /// `exec ID /bin/true`: spawn → exit status received.
    pub fn exec_true(&self, id: &str) -> Result<Duration> {
        let mut cmd = self.command();
        cmd.arg("exec")
            .arg(id)
            .arg("/bin/true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let t0 = Instant::now();
        let out = cmd
            .output()
            .with_context(|| format!("spawn {}", self.bin.display()))?;
        let elapsed = t0.elapsed();
        if !out.status.success() {
            bail!(
                "{} exec {id} /bin/true failed ({}): {}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(elapsed)
    }

    /// `delete -f ID`, best effort (used on cleanup paths).
    pub fn delete(&self, id: &str) {
        let res = self
            .command()
            .arg("delete")
            .arg("--force")
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output();
        match res {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                let err = String::from_utf8_lossy(&out.stderr);
                // Already gone is fine: `run` deletes on exit.
                if !err.contains("does not exist") && !err.contains("not exist") {
                    eprintln!("warning: {} delete {id}: {}", self.name, err.trim());
                }
            }
            Err(e) => eprintln!("warning: {} delete {id}: {e}", self.name),
        }
    }
}

/// A detached container; deleted (forcefully) on drop.
pub struct Container<'a> {
    peer: &'a OciPeer,
    pub id: String,
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        self.peer.delete(&self.id);
    }
}

/// bubblewrap over the shared rootfs.
pub struct Bwrap {
    bin: PathBuf,
    rootfs: PathBuf,
}

impl Bwrap {
    pub fn new(bin: PathBuf, rootfs: &Path) -> Self {
        Self {
            bin,
            rootfs: rootfs.to_path_buf(),
        }
    }

    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// `bwrap --unshare-all --die-with-parent --bind ROOTFS / --proc /proc
    /// --dev /dev /bin/echo hi`: start → first byte → exit.
    pub fn run_cycle(&self) -> Result<Timing> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(["--unshare-all", "--die-with-parent", "--bind"])
            .arg(&self.rootfs)
            .args(["/", "--proc", "/proc", "--dev", "/dev", "/bin/echo", "hi"]);
        first_byte_then_exit(cmd).context("bwrap")
    }
}

/// Spawns `cmd` with stdout piped; times the first byte and the exit.
fn first_byte_then_exit(mut cmd: Command) -> Result<Timing> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let t0 = Instant::now();
    let mut child = cmd.spawn().context("spawn")?;
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let first = read_first_byte(&mut stdout, FIRST_BYTE_TIMEOUT);
    let first_byte = t0.elapsed();
    if first.is_err() {
        // Do not leave a hung runtime behind; its stderr explains the failure.
        let _ = child.kill();
    }
    // Reads stderr to EOF, then reaps the child.
    let out = child.wait_with_output().context("wait")?;
    let cycle = t0.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let byte = first.with_context(|| format!("stderr: {}", stderr.trim()))?;
    ensure!(
        out.status.success(),
        "exited with {}: {}",
        out.status,
        stderr.trim()
    );
    ensure!(byte == b'h', "unexpected first byte {byte:#04x}");
    Ok(Timing { first_byte, cycle })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_config_sets_args_terminal_and_root() {
        let base = json!({
            "ociVersion": "1.0.2-dev",
            "process": { "terminal": true, "args": ["sh"], "cwd": "/" },
            "root": { "path": "rootfs", "readonly": true },
        });
        let cfg = edit_config(base, &["/bin/echo", "hi"], Path::new("/data/rootfs")).expect("edit");
        assert_eq!(cfg["process"]["args"], json!(["/bin/echo", "hi"]));
        assert_eq!(cfg["process"]["terminal"], json!(false));
        assert_eq!(cfg["process"]["cwd"], json!("/"));
        assert_eq!(
            cfg["root"],
            json!({ "path": "/data/rootfs", "readonly": false })
        );
        assert!(edit_config(json!({}), &["x"], Path::new("/r")).is_err());
    }

    #[test]
    fn which_finds_sh() {
        assert!(which("sh").is_some());
        assert!(which("definitely-not-a-command-warren").is_none());
    }
}
