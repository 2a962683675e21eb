//! End to end: the real `warren` binary as `serve` on a loopback port, and
//! the real `warren` CLI against it. Needs root (it creates sandboxes).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use warren_testkit::wait_until;

const BIN: &str = env!("CARGO_BIN_EXE_warren");

/// A running `warren serve`; on drop, terminates the sandboxes it still
/// has, stops the server (SIGTERM, then SIGKILL after a bound) and removes
/// its data directory.
struct Server {
    child: Child,
    port: u16,
    url: String,
    token: String,
    dir: Option<tempfile::TempDir>,
    /// Flags after `serve --listen ...`.
    extra: Vec<String>,
}

impl Server {
    fn start() -> Server {
        Self::start_with(|_| {})
    }

    /// Starts a server after `prepare` has seen its (new) data directory.
    fn start_with(prepare: impl FnOnce(&Path)) -> Server {
        Self::launch(|data, _| {
            prepare(data);
            vec!["--no-network".into(), "--no-relay".into()]
        })
    }

    /// Starts a server with the `serve` flags `prepare` returns, after it
    /// has seen the (new) data directory and the API port.
    fn launch(prepare: impl FnOnce(&Path, u16) -> Vec<String>) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("warren-e2e-")
            .tempdir_in("/var/tmp")
            .expect("create the data dir");
        std::fs::create_dir_all(dir.path().join("data")).expect("create the data dir");
        // Tests never reach the internet: short image names resolve to a
        // loopback port where nothing listens, unless `prepare` says else.
        std::fs::write(
            dir.path().join("data/registries.json"),
            r#"{"default_registry": "127.0.0.1:9", "registries": {"127.0.0.1:9": {"insecure": true}}}"#,
        )
        .expect("write registries.json");
        let port = free_port();
        let extra = prepare(&dir.path().join("data"), port);
        let child = spawn_server(dir.path(), port, &extra);
        let mut s = Server {
            child,
            port,
            url: format!("http://127.0.0.1:{port}"),
            token: String::new(),
            dir: Some(dir),
            extra,
        };
        s.await_ready();
        s.token = std::fs::read_to_string(s.data_dir().join("admin-token"))
            .expect("read the admin token")
            .trim()
            .to_string();
        s
    }

    fn await_ready(&mut self) {
        let token_path = self.data_dir().join("admin-token");
        let port = self.port;
        let ready = wait_until(Duration::from_secs(60), || {
            healthy(port) && token_path.exists() || self.exited()
        });
        assert!(
            ready && !self.exited(),
            "the server did not come up:\n{}",
            self.log()
        );
    }

    /// SIGKILLs the server (no shutdown path runs) and starts a new one on
    /// the same data directory and port.
    fn kill9_and_restart(&mut self) {
        let pid = Pid::from_raw(self.child.id() as i32);
        kill(pid, Signal::SIGKILL).expect("SIGKILL the server");
        let _ = self.child.wait();
        self.child = spawn_server(self.root(), self.port, &self.extra);
        self.await_ready();
    }

    fn data_dir(&self) -> PathBuf {
        self.root().join("data")
    }

    fn root(&self) -> &Path {
        self.dir.as_ref().expect("dir is set until drop").path()
    }

    fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.root().join("server.log")).unwrap_or_default()
    }

    /// Runs the CLI with the admin token.
    fn cli(&self, args: &[&str]) -> Output {
        self.cli_as(&self.token, args)
    }

    fn cli_as(&self, token: &str, args: &[&str]) -> Output {
        self.command_as(token, args)
            .stdin(Stdio::null())
            .output()
            .expect("run the warren CLI")
    }

    /// The CLI as a command with the admin token, stdio not yet set.
    fn command(&self, args: &[&str]) -> Command {
        self.command_as(&self.token, args)
    }

    fn command_as(&self, token: &str, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .env("WARREN_URL", &self.url)
            .env("WARREN_TOKEN", token)
            .env_remove("WARREN_DATA_DIR");
        c
    }

    /// Runs the CLI with `input` on its stdin.
    fn cli_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the warren CLI");
        let mut stdin = child.stdin.take().expect("piped stdin");
        let input = input.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&input));
        let out = child.wait_with_output().expect("wait for the CLI");
        writer
            .join()
            .expect("stdin writer")
            .expect("write the CLI's stdin");
        out
    }

    /// The ids of this server's sandboxes that are not terminated.
    fn live_sandboxes(&self) -> Vec<String> {
        let list: Vec<serde_json::Value> =
            serde_json::from_str(&ok(self.cli(&["sandbox", "ls", "--json"]))).expect("json");
        list.iter()
            .filter(|s| s["state"] != "terminated")
            .filter_map(|s| s["id"].as_str().map(String::from))
            .collect()
    }

    /// A marker naming this server's mounts and cgroups, for the leak check.
    fn marker(&self) -> String {
        self.root()
            .file_name()
            .expect("tempdir has a name")
            .to_string_lossy()
            .into_owned()
    }
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// Starts `warren serve`. Tests pass `--no-network` (several servers run
/// at once, and networking claims host-wide names and addresses; the
/// networking tests move into their own namespace first) and either
/// `--no-relay` or a relay on free ports.
fn spawn_server(root: &Path, port: u16, extra: &[String]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(root.join("server.log"))
        .expect("open the log");
    Command::new(BIN)
        .arg("--data-dir")
        .arg(root.join("data"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone the log"))
        .stderr(log)
        .spawn()
        .expect("start warren serve")
}

/// Ends a test: stops the server and checks nothing of it is left.
fn finish(server: Server) {
    let marker = server.marker();
    drop(server);
    let leaks: Vec<String> = warren_testkit::leaks(&marker)
        .into_iter()
        .filter(|l| !l.starts_with("process:"))
        .collect();
    assert!(leaks.is_empty(), "left behind: {leaks:#?}");
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- server log ---\n{}", self.log());
        }
        // Sandboxes outlive the server by design: end ours first.
        let out = self.cli(&["sandbox", "ls", "--json"]);
        if let Ok(list) = serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout) {
            for sb in list {
                if sb["state"] != "terminated" {
                    if let Some(id) = sb["id"].as_str() {
                        let _ = self.cli(&["sandbox", "terminate", id]);
                    }
                }
            }
        }
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        if !wait_until(Duration::from_secs(15), || self.exited()) {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = self.child.wait();
        }
        if let Some(dir) = self.dir.take() {
            let path = dir.path().to_path_buf();
            if let Err(e) = dir.close() {
                eprintln!("could not remove {}: {e}", path.display());
            }
        }
    }
}

fn healthy(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /healthz HTTP/1.0\r\nHost: x\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.1 200") || buf.starts_with("HTTP/1.0 200")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn describe(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        stdout(o),
        stderr(o)
    )
}

/// Asserts success and returns trimmed stdout.
fn ok(o: Output) -> String {
    assert!(o.status.success(), "command failed: {}", describe(&o));
    stdout(&o).trim().to_string()
}

/// Asserts a failure reported as exactly one `warren: ...` line.
fn one_line_error(o: &Output, code_hint: &str) {
    assert!(!o.status.success(), "expected failure: {}", describe(o));
    let err = stderr(o);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line: {}", describe(o));
    assert!(lines[0].starts_with("warren: "), "{}", describe(o));
    assert!(lines[0].contains(code_hint), "{}", describe(o));
    assert!(!err.contains("panicked"), "{}", describe(o));
}

/// A loopback registry holding a busybox image with a second layer of
/// `noise_len` incompressible bytes, under each of `refs`; the temporary
/// directory holds its OCI layout.
fn registry_with_image(
    noise_len: usize,
    seed: u64,
    refs: &[&str],
) -> (warren_testkit::registry::Registry, tempfile::TempDir) {
    use warren_testkit::registry::{busybox_tar, Compress, LayoutBuilder, Registry, TestConfig};
    let reg = Registry::start().expect("start docker-registry");
    let work = tempfile::tempdir().expect("tempdir");
    let mut layout = LayoutBuilder::new(&work.path().join("layout")).expect("layout");
    let base = layout
        .layer(&busybox_tar().expect("busybox tar"), Compress::Gzip)
        .expect("layer");
    let noise = warren_testkit::registry::noise(noise_len, seed);
    let big = layout
        .layer(
            &warren_testkit::registry::TarBuilder::new()
                .file("blob", 0o644, &noise)
                .finish(),
            Compress::Gzip,
        )
        .expect("layer");
    layout
        .image(
            "v1",
            &[base, big],
            &TestConfig {
                env: vec!["PATH=/bin".into()],
                ..Default::default()
            },
        )
        .expect("image");
    for r in refs {
        reg.push(layout.dir(), "v1", r).expect("push");
    }
    (reg, work)
}

/// Issue #5 through the binary: `warren image pull` from a real registry
/// with plain progress lines (and bars under a terminal), `ls`, `inspect`,
/// a sandbox from the pulled image, a `docker save` archive import, `rm`
/// and `gc`.
#[test]
fn images_through_the_cli() {
    if !warren_testkit::require_root("images_through_the_cli")
        || !warren_testkit::registry::require_tools("images_through_the_cli")
    {
        return;
    }
    // A second, incompressible layer large enough to show progress.
    let (reg, work) = registry_with_image(8 << 20, 7, &["e2e/app:v1", "e2e/app:v2"]);
    let host = reg.host();
    let server = Server::start_with(|data| {
        let cfg = serde_json::json!({
            "default_registry": "127.0.0.1:9",
            "registries": {host.clone(): {"insecure": true}, "127.0.0.1:9": {"insecure": true}}
        });
        std::fs::write(data.join("registries.json"), cfg.to_string()).expect("registries.json");
    });
    let reference = format!("{host}/e2e/app:v1");

    // Not a terminal: plain progress lines on stderr, the id on stdout.
    let out = server.cli(&["image", "pull", &reference]);
    assert!(out.status.success(), "{}", describe(&out));
    let id = stdout(&out).trim().to_string();
    assert!(id.starts_with("sha256:"), "{}", describe(&out));
    let err = stderr(&out);
    for want in ["2 layer(s)", ": downloaded", ": unpacked", "pulled "] {
        assert!(err.contains(want), "no {want:?} in: {err}");
    }
    let ls = ok(server.cli(&["image", "ls"]));
    assert!(ls.contains(&reference), "{ls}");
    let inspect = ok(server.cli(&["image", "inspect", &reference]));
    let v: serde_json::Value = serde_json::from_str(&inspect).expect("inspect JSON");
    assert_eq!(v["id"], id.as_str());
    assert_eq!(v["layers"].as_array().map(Vec::len), Some(2), "{v}");

    // A sandbox from it.
    let out = ok(server.cli(&["run", "--image", &reference, "--", "cat", "/etc/passwd"]));
    assert!(out.contains("app:x:1000"), "{out}");

    // A terminal: progress bars (bytes, rate, ETA) drawn on it.
    let size = nix::pty::Winsize {
        ws_row: 40,
        ws_col: 160,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let (status, tty_out) = under_pty(
        &server,
        &["image", "pull", &format!("{host}/e2e/app:v2")],
        size,
        b"",
    );
    assert!(status.success(), "{tty_out}");
    assert!(
        tty_out.contains("ETA") && tty_out.contains("pulled"),
        "{tty_out:?}"
    );

    // A `docker save` archive, made by skopeo from the same layout.
    let archive = work.path().join("saved.tar");
    let made = Command::new("skopeo")
        .args(["copy", "--quiet"])
        .arg(format!("oci:{}:v1", work.path().join("layout").display()))
        .arg(format!("docker-archive:{}:saved/app:v1", archive.display()))
        .output()
        .expect("skopeo");
    assert!(made.status.success(), "{}", describe(&made));
    let imported = ok(server.cli(&[
        "image",
        "import",
        archive.to_str().expect("utf-8 path"),
        "--name",
        "imported:v1",
    ]));
    assert!(imported.starts_with("sha256:"), "{imported}");
    assert!(ok(server.cli(&["image", "ls"])).contains("imported:v1"));

    // rm and gc; a bad reference is one clear error line.
    ok(server.cli(&["image", "rm", "imported:v1"]));
    assert!(!ok(server.cli(&["image", "ls"])).contains("imported:v1"));
    let gc = ok(server.cli(&["image", "gc"]));
    assert!(gc.starts_with("removed "), "{gc}");
    let bad = server.cli(&["image", "pull", "Not A Ref"]);
    one_line_error(&bad, "invalid");
    finish(server);
}

/// Background execs through the binary: `exec --detach`, `ps`, `attach`
/// (replay, then live; a dropped attach leaves the exec running), `kill`.
#[test]
fn background_execs_through_the_cli() {
    if !warren_testkit::require_root("background_execs_through_the_cli") {
        return;
    }
    let server = Server::start();
    let id = ok(server.cli(&["sandbox", "create"]));
    let x = ok(server.cli(&[
        "sandbox",
        "exec",
        "--detach",
        &id,
        "--",
        "sh",
        "-c",
        "echo hello; sleep 0.5; echo world; sleep 100",
    ]));
    assert!(x.starts_with("ex_"), "{x}");
    let ps = ok(server.cli(&["sandbox", "ps", &id]));
    assert!(ps.contains(&x) && ps.contains("running"), "{ps}");

    // Attach: the buffered "hello", then the live "world".
    let mut child = server
        .command(&["sandbox", "attach", &id, &x])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("attach");
    let lines = line_reader(child.stdout.take().expect("stdout"));
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline && !seen.iter().any(|l| l == "world") {
        if let Ok(l) = lines.recv_timeout(Duration::from_millis(200)) {
            seen.push(l);
        }
    }
    assert_eq!(seen, ["hello", "world"]);
    // The connection drops: the exec keeps running.
    let _ = child.kill();
    let _ = child.wait();
    let ps = ok(server.cli(&["sandbox", "ps", &id, "--json"]));
    let v: serde_json::Value = serde_json::from_str(&ps).expect("ps JSON");
    assert_eq!(v[0]["state"], "running", "{v}");

    // SIGTERM ends it; `ps` says how.
    ok(server.cli(&["sandbox", "kill", &id, &x, "--signal", "15"]));
    let ended = wait_until(Duration::from_secs(10), || {
        let out = server.cli(&["sandbox", "ps", &id, "--json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .is_ok_and(|v| v[0]["state"] == "exited" && v[0]["signal"] == 15)
    });
    assert!(ended, "{}", ok(server.cli(&["sandbox", "ps", &id])));
    ok(server.cli(&["sandbox", "kill", &id, &x]));
    assert_eq!(ok(server.cli(&["sandbox", "ps", &id, "--json"])), "[]");
    let missing = server.cli(&["sandbox", "kill", &id, "ex_nosuchexec"]);
    one_line_error(&missing, "not_found");
    finish(server);
}

/// Files through the binary: `sandbox cp` both ways (a file and a whole
/// directory with a symlink), and `sandbox files` ls, cat, put, mkdir, mv,
/// rm, stat.
#[test]
fn files_through_the_cli() {
    if !warren_testkit::require_root("files_through_the_cli") {
        return;
    }
    let server = Server::start();
    let id = ok(server.cli(&["sandbox", "create"]));
    let local = tempfile::tempdir().expect("tempdir");
    let src = local.path().join("proj");
    std::fs::create_dir_all(src.join("sub")).expect("mkdir");
    std::fs::write(src.join("a.txt"), "alpha\n").expect("write");
    let big: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
    std::fs::write(src.join("sub/b.bin"), &big).expect("write");
    std::os::unix::fs::symlink("a.txt", src.join("link")).expect("symlink");
    let remote = format!("{id}:/tmp/up");
    ok(server.cli(&["sandbox", "cp", src.to_str().expect("utf-8"), &remote]));
    let ls = ok(server.cli(&["sandbox", "files", "ls", &id, "/tmp/up", "-r"]));
    assert!(
        ls.contains("/tmp/up/sub/b.bin") && ls.contains("3145728"),
        "{ls}"
    );
    assert_eq!(
        ok(server.cli(&["sandbox", "files", "cat", &id, "/tmp/up/a.txt"])),
        "alpha"
    );
    // put from stdin, mkdir, mv, stat, rm.
    let mut put = server
        .command(&[
            "sandbox",
            "files",
            "put",
            &id,
            "/tmp/new/x.txt",
            "--parents",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("put");
    put.stdin
        .take()
        .expect("stdin")
        .write_all(b"from stdin")
        .expect("write stdin");
    let out = put.wait_with_output().expect("put");
    assert!(out.status.success(), "{}", describe(&out));
    ok(server.cli(&["sandbox", "files", "mkdir", &id, "/tmp/new/d", "-p"]));
    ok(server.cli(&[
        "sandbox",
        "files",
        "mv",
        &id,
        "/tmp/new/x.txt",
        "/tmp/new/d/y.txt",
    ]));
    let stat = ok(server.cli(&["sandbox", "files", "stat", &id, "/tmp/new/d/y.txt"]));
    assert!(stat.contains("\"size\": 10"), "{stat}");
    ok(server.cli(&["sandbox", "files", "rm", &id, "/tmp/new", "-r"]));
    let gone = server.cli(&["sandbox", "files", "stat", &id, "/tmp/new"]);
    one_line_error(&gone, "file_not_found");
    // Uploads skip symlinks (the file agent has no symlink operation yet);
    // one made inside the sandbox comes back out as a symlink.
    ok(server.cli(&[
        "sandbox",
        "exec",
        &id,
        "--",
        "ln",
        "-s",
        "a.txt",
        "/tmp/up/link",
    ]));
    // Back out: the directory, then one file into an existing directory.
    let back = local.path().join("back");
    ok(server.cli(&["sandbox", "cp", &remote, back.to_str().expect("utf-8")]));
    assert_eq!(std::fs::read(back.join("sub/b.bin")).expect("read"), big);
    assert_eq!(
        std::fs::read_to_string(back.join("a.txt")).expect("read"),
        "alpha\n"
    );
    assert_eq!(
        std::fs::read_link(back.join("link")).expect("readlink"),
        std::path::PathBuf::from("a.txt")
    );
    ok(server.cli(&[
        "sandbox",
        "cp",
        &format!("{id}:/tmp/up/a.txt"),
        local.path().to_str().expect("utf-8"),
    ]));
    assert_eq!(
        std::fs::read_to_string(local.path().join("a.txt")).expect("read"),
        "alpha\n"
    );
    let bad = server.cli(&["sandbox", "cp", "a", "b"]);
    one_line_error(&bad, "ID:/path");
    finish(server);
}

/// A private tmux server for one test, killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new(tag: &str) -> Tmux {
        Tmux {
            socket: format!("warren-e2e-{}-{tag}", std::process::id()),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run tmux")
    }

    fn screen(&self) -> String {
        stdout(&self.run(&["capture-pane", "-p", "-t", "t"]))
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "t"];
        args.extend_from_slice(keys);
        let out = self.run(&args);
        assert!(out.status.success(), "{}", describe(&out));
    }

    /// Waits until the screen shows `text`.
    fn wait_for(&self, text: &str) -> String {
        let mut screen = String::new();
        let found = wait_until(Duration::from_secs(20), || {
            screen = self.screen();
            screen.contains(text)
        });
        assert!(found, "{text:?} never appeared on the screen:\n{screen}");
        screen
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

/// `warren sandbox shell` in a real terminal (tmux): a shell prompt, resize
/// forwarded, job control and Ctrl-C, a Python REPL, `top`, `vim`, and the
/// local terminal restored on exit and on a dropped connection.
#[test]
fn shell_under_tmux() {
    if !warren_testkit::require_root("shell_under_tmux")
        || !warren_testkit::require(
            "shell_under_tmux",
            which("tmux") && which("vim.tiny"),
            "needs tmux and vim-tiny (scripts/install-deps.sh)",
        )
    {
        return;
    }
    let mut server = Server::start();
    let id = ok(server.cli(&["sandbox", "create", "--timeout", "600"]));
    let marks = tempfile::tempdir().expect("tempdir");
    let m = marks.path().display().to_string();
    let tmux = Tmux::new("a");
    let script = format!(
        "stty -g > {m}/before; WARREN_URL={url} WARREN_TOKEN={token} {BIN} sandbox shell {id}; \
         rc=$?; stty -g > {m}/after; echo exited:$rc; sleep 600",
        url = server.url,
        token = server.token,
    );
    let out = tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "t",
        "-x",
        "120",
        "-y",
        "40",
        "sh",
        "-c",
        &script,
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let _ = tmux.run(&["set-option", "-g", "status", "off"]);
    tmux.keys(&["PS1='wsh$ '", "Enter"]);
    tmux.wait_for("wsh$");
    tmux.keys(&["echo $((6*7))", "Enter"]);
    tmux.wait_for("42");
    // The terminal's size, then a resize forwarded (SIGWINCH).
    tmux.keys(&["clear; stty size", "Enter"]);
    tmux.wait_for("40 120");
    let _ = tmux.run(&["resize-window", "-t", "t", "-x", "100", "-y", "30"]);
    tmux.keys(&["clear; stty size", "Enter"]);
    tmux.wait_for("30 100");
    // Job control: a background job, and Ctrl-C reaching the foreground.
    tmux.keys(&["clear; sleep 300 & jobs", "Enter"]);
    tmux.wait_for("Running");
    tmux.keys(&["sleep 300", "Enter"]);
    std::thread::sleep(Duration::from_millis(300));
    tmux.keys(&["C-c"]);
    tmux.keys(&["echo after-int-$?", "Enter"]);
    tmux.wait_for("after-int-130");
    // A Python REPL.
    tmux.keys(&["clear; python3 -q", "Enter"]);
    tmux.wait_for(">>>");
    tmux.keys(&["print(6*7+1)", "Enter"]);
    tmux.wait_for("43");
    tmux.keys(&["C-d"]);
    // top draws its screen and quits on q.
    tmux.keys(&["clear; top -d 1", "Enter"]);
    tmux.wait_for("load average");
    // top may discard input that arrives while it sets the terminal up:
    // q again (bounded) until its screen is gone.
    let quit = (0..20).any(|_| {
        tmux.keys(&["q"]);
        wait_until(Duration::from_secs(1), || {
            !tmux.screen().contains("load average")
        })
    });
    assert!(quit, "top never quit:\n{}", tmux.screen());
    // vim edits a file.
    tmux.keys(&["clear; vim.tiny -N -u NONE /tmp/v.txt", "Enter"]);
    tmux.wait_for("v.txt");
    tmux.keys(&["i", "hello from vim"]);
    tmux.wait_for("hello from vim");
    // A pause after Escape, or vim reads Escape + ':' as one Alt key.
    tmux.keys(&["Escape"]);
    std::thread::sleep(Duration::from_millis(500));
    tmux.keys(&[":wq", "Enter"]);
    tmux.wait_for("wsh$");
    tmux.keys(&["clear; cat /tmp/v.txt", "Enter"]);
    tmux.wait_for("hello from vim");
    // Exit: the local terminal is as before.
    tmux.keys(&["exit", "Enter"]);
    tmux.wait_for("exited:0");
    let before = std::fs::read_to_string(marks.path().join("before")).expect("before");
    let after = std::fs::read_to_string(marks.path().join("after")).expect("after");
    assert_eq!(before, after, "the terminal was not restored after exit");

    // A dropped connection (the server is killed): the CLI ends and still
    // restores the terminal.
    drop(tmux);
    let tmux = Tmux::new("b");
    let out = tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "t",
        "-x",
        "120",
        "-y",
        "40",
        "sh",
        "-c",
        &script,
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    tmux.keys(&["PS1='wsh$ '", "Enter"]);
    tmux.wait_for("wsh$");
    let _ = std::fs::remove_file(marks.path().join("after"));
    server.kill9_and_restart();
    tmux.wait_for("exited:");
    let after = std::fs::read_to_string(marks.path().join("after")).expect("after");
    assert_eq!(
        before, after,
        "the terminal was not restored after a dropped connection"
    );
    drop(tmux);
    finish(server);
}

fn which(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn cli_against_a_real_server() {
    if !warren_testkit::require_root("cli_against_a_real_server") {
        return;
    }
    let server = Server::start();

    // create prints only the id.
    let id = ok(server.cli(&["sandbox", "create", "--tag", "e2e=one"]));
    assert!(
        id.starts_with("sb-") && !id.contains(char::is_whitespace),
        "{id:?}"
    );
    let other = ok(server.cli(&["sandbox", "create", "--tag", "e2e=two", "--name", "other"]));

    // logs: the main command's output, also after it ended.
    let logged = ok(server.cli(&[
        "sandbox",
        "create",
        "--",
        "sh",
        "-c",
        "echo to-log; echo err-log >&2; exit 2",
    ]));
    let o = server.cli(&["sandbox", "wait", &logged]);
    assert_eq!(o.status.code(), Some(2), "{}", describe(&o));
    let o = server.cli(&["sandbox", "logs", &logged]);
    assert_eq!(stdout(&o), "to-log\nerr-log\n", "{}", describe(&o));
    let o = server.cli(&["sandbox", "logs", "--tail", "8", &logged]);
    assert_eq!(stdout(&o), "err-log\n", "{}", describe(&o));

    // exec passes output and the exit code through.
    let o = server.cli(&["sandbox", "exec", &id, "--", "sh", "-c", "echo hi; exit 3"]);
    assert_eq!(o.status.code(), Some(3), "{}", describe(&o));
    assert_eq!(stdout(&o), "hi\n");

    // A timed-out exec exits 124 with a line saying so.
    let o = server.cli(&[
        "sandbox",
        "exec",
        "--timeout",
        "1",
        &id,
        "--",
        "sleep",
        "30",
    ]);
    assert_eq!(o.status.code(), Some(124), "{}", describe(&o));
    assert!(stderr(&o).contains("timed out"), "{}", describe(&o));

    // get --json shows the state.
    let sb: serde_json::Value =
        serde_json::from_str(&ok(server.cli(&["sandbox", "get", &id, "--json"]))).expect("json");
    assert_eq!(sb["state"], "running");
    assert_eq!(sb["id"], id.as_str());

    // ls --tag filters.
    let list: Vec<serde_json::Value> = serde_json::from_str(&ok(
        server.cli(&["sandbox", "ls", "--tag", "e2e=one", "--json"])
    ))
    .expect("json");
    let ids: Vec<&str> = list.iter().filter_map(|s| s["id"].as_str()).collect();
    assert_eq!(ids, vec![id.as_str()]);
    let table = ok(server.cli(&["sandbox", "ls"]));
    assert!(table.starts_with("ID"), "{table}");
    assert!(table.contains(&id) && table.contains(&other), "{table}");

    // terminate, then wait reports it.
    ok(server.cli(&["sandbox", "terminate", &id]));
    let o = server.cli(&["sandbox", "wait", &id, "--timeout", "30"]);
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
    assert!(stdout(&o).contains("terminated"), "{}", describe(&o));

    // A sandbox with a main command: wait exits with its code.
    let cmd_id = ok(server.cli(&["sandbox", "create", "--", "sh", "-c", "exit 7"]));
    let o = server.cli(&["sandbox", "wait", &cmd_id, "--timeout", "60"]);
    assert_eq!(o.status.code(), Some(7), "{}", describe(&o));
    assert!(stdout(&o).contains("exited"), "{}", describe(&o));

    // run goes through the server and exits with the command's code.
    let o = server.cli(&["run", "--", "sh", "-c", "echo out; exit 5"]);
    assert_eq!(o.status.code(), Some(5), "{}", describe(&o));
    assert_eq!(stdout(&o), "out\n");

    // Errors: one line, non-zero, never a panic.
    one_line_error(&server.cli(&["sandbox", "create", "--bogus"]), "--bogus");
    one_line_error(
        &server.cli(&["sandbox", "get", "sb-doesnotexist"]),
        "(sandbox_not_found)",
    );
    one_line_error(
        &server.cli(&["sandbox", "exec", "sb-doesnotexist", "--", "true"]),
        "(sandbox_not_found)",
    );

    // A new token works, and stops working once revoked.
    let secret = ok(server.cli(&["token", "create", "e2e-user"]));
    assert!(!secret.is_empty() && !secret.contains('\n'), "{secret:?}");
    ok(server.cli_as(&secret, &["sandbox", "ls", "--json"]));
    let tokens = ok(server.cli(&["token", "ls"]));
    let tok_id = tokens
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("e2e-user"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("e2e-user not listed:\n{tokens}"))
        .to_string();
    ok(server.cli(&["token", "revoke", &tok_id]));
    one_line_error(
        &server.cli_as(&secret, &["sandbox", "ls"]),
        "(unauthenticated)",
    );

    // Workspaces (admin).
    let ws = ok(server.cli(&["workspace", "create", "e2e-ws"]));
    assert!(ok(server.cli(&["workspace", "ls"])).contains(&ws));

    finish(server);
}

#[test]
fn streaming_exec() {
    if !warren_testkit::require_root("streaming_exec") {
        return;
    }
    let server = Server::start();
    let id = ok(server.cli(&["sandbox", "create"]));

    // Output arrives while the command still runs: `a` is read before the
    // command has slept and printed `b`.
    let mut child = server
        .command(&[
            "sandbox",
            "exec",
            &id,
            "--",
            "sh",
            "-c",
            "echo a; sleep 1; echo b",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the CLI");
    let lines = line_reader(child.stdout.take().expect("piped stdout"));
    let first = lines
        .recv_timeout(Duration::from_secs(30))
        .expect("the first line in time");
    assert_eq!(first, "a");
    assert!(
        matches!(child.try_wait(), Ok(None)),
        "the CLI had already ended when the first line arrived"
    );
    let second = lines
        .recv_timeout(Duration::from_secs(30))
        .expect("the second line in time");
    assert_eq!(second, "b");
    let mut stderr_text = String::new();
    child
        .stderr
        .take()
        .expect("piped stderr")
        .read_to_string(&mut stderr_text)
        .expect("read stderr");
    let status = child.wait().expect("wait for the CLI");
    assert!(status.success(), "{status:?} {stderr_text}");

    // stdout and stderr stay apart; the exit code passes through.
    let o = server.cli(&[
        "sandbox",
        "exec",
        &id,
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 4",
    ]);
    assert_eq!(o.status.code(), Some(4), "{}", describe(&o));
    assert_eq!(stdout(&o), "out\n");
    assert_eq!(stderr(&o), "err\n");

    // -i forwards our stdin, and its end closes the command's.
    let o = server.cli_stdin(&["sandbox", "exec", "-i", &id, "--", "cat"], b"hello\n");
    assert!(o.status.success(), "{}", describe(&o));
    assert_eq!(stdout(&o), "hello\n");
    // Without -i the command's stdin is closed at once: cat ends.
    let o = server.cli(&["sandbox", "exec", "--timeout", "20", &id, "--", "cat"]);
    assert!(o.status.success(), "{}", describe(&o));
    assert_eq!(stdout(&o), "");
    // --env and --workdir reach the command.
    let o = server.cli(&[
        "sandbox",
        "exec",
        "--env",
        "WHO=e2e",
        "--workdir",
        "/tmp",
        &id,
        "--",
        "sh",
        "-c",
        "echo $WHO $PWD",
    ]);
    assert_eq!(ok(o), "e2e /tmp");

    // 20 MiB of random bytes arrive byte-exact.
    ok(server.cli(&[
        "sandbox",
        "exec",
        &id,
        "--",
        "sh",
        "-c",
        "head -c 20971520 /dev/urandom > /tmp/big",
    ]));
    let inside = ok(server.cli(&["sandbox", "exec", &id, "--", "sha256sum", "/tmp/big"]));
    let inside = inside
        .split_whitespace()
        .next()
        .expect("a hash")
        .to_string();
    let o = server.cli(&["sandbox", "exec", &id, "--", "cat", "/tmp/big"]);
    assert!(o.status.success(), "status {:?}: {}", o.status, stderr(&o));
    assert_eq!(o.stdout.len(), 20 << 20);
    use sha2::Digest;
    assert_eq!(hex::encode(sha2::Sha256::digest(&o.stdout)), inside);

    // An error frame keeps the server's code.
    one_line_error(
        &server.cli(&["sandbox", "exec", &id, "--", "/no/such/program"]),
        "(exec_not_found)",
    );

    // run forwards SIGINT to the command and terminates its sandbox.
    let mut child = server
        .command(&[
            "run",
            "--",
            "sh",
            "-c",
            "trap 'echo got-int; exit 42' INT; echo ready; while :; do sleep 0.1; done",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the CLI");
    let lines = line_reader(child.stdout.take().expect("piped stdout"));
    assert_eq!(
        lines
            .recv_timeout(Duration::from_secs(60))
            .expect("ready in time"),
        "ready"
    );
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).expect("SIGINT the CLI");
    assert_eq!(
        lines
            .recv_timeout(Duration::from_secs(30))
            .expect("the trap's line in time"),
        "got-int"
    );
    assert!(
        wait_until(Duration::from_secs(30), || matches!(
            child.try_wait(),
            Ok(Some(_))
        )),
        "the CLI did not exit after SIGINT"
    );
    let status = child.wait().expect("wait for the CLI");
    assert_eq!(status.code(), Some(42));
    assert_eq!(server.live_sandboxes(), vec![id.clone()]);

    finish(server);
}

#[test]
fn termination_reasons_through_the_cli() {
    if !warren_testkit::require_root("termination_reasons_through_the_cli") {
        return;
    }
    let server = Server::start();
    let timeout = ok(server.cli(&["sandbox", "create", "--timeout", "1"]));
    let idle = ok(server.cli(&["sandbox", "create", "--idle-timeout", "1"]));
    let oom = ok(server.cli(&[
        "sandbox",
        "create",
        "--memory",
        "32",
        "--",
        "/usr/bin/python3",
        "-c",
        "b=bytearray(300<<20)",
    ]));

    let o = server.cli(&["sandbox", "wait", &timeout, "--timeout", "60"]);
    assert_eq!(stdout(&o).trim(), "timeout", "{}", describe(&o));
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));

    let o = server.cli(&["sandbox", "wait", &idle, "--timeout", "60"]);
    assert_eq!(stdout(&o).trim(), "idle_timeout", "{}", describe(&o));

    let o = server.cli(&["sandbox", "wait", &oom, "--timeout", "60"]);
    assert_eq!(
        stdout(&o).trim(),
        "oom_killed (exit code 137)",
        "{}",
        describe(&o)
    );
    assert_eq!(o.status.code(), Some(137), "{}", describe(&o));

    finish(server);
}

#[test]
fn sandboxes_survive_a_server_kill9() {
    if !warren_testkit::require_root("sandboxes_survive_a_server_kill9") {
        return;
    }
    let mut server = Server::start();
    let idle = ok(server.cli(&["sandbox", "create"]));
    let exits = ok(server.cli(&["sandbox", "create", "--", "sh", "-c", "sleep 1; exit 9"]));

    server.kill9_and_restart();

    let o = server.cli(&["sandbox", "exec", &idle, "--", "echo", "alive"]);
    assert_eq!(ok(o), "alive");
    let o = server.cli(&["sandbox", "wait", &exits, "--timeout", "60"]);
    assert_eq!(
        stdout(&o).trim(),
        "exited (exit code 9)",
        "{}",
        describe(&o)
    );
    assert_eq!(o.status.code(), Some(9), "{}", describe(&o));

    finish(server);
}

#[test]
fn hundred_concurrent_creates_through_the_binary() {
    if !warren_testkit::require_root("hundred_concurrent_creates_through_the_binary") {
        return;
    }
    let server = Server::start();
    let client = warren_client::Client::new(&server.url, server.token.clone()).expect("client");
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    let ids: Vec<String> = rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let c = client.clone();
            tasks.push(tokio::spawn(async move {
                let req = warren_proto::api::CreateSandboxRequest {
                    command: Some(vec!["true".into()]),
                    ..Default::default()
                };
                c.create_sandbox(&req).await.map(|s| s.id)
            }));
        }
        let mut ids = Vec::new();
        for t in tasks {
            ids.push(t.await.expect("task").expect("create"));
        }
        ids
    });
    assert_eq!(ids.len(), 100);
    for id in &ids {
        let o = server.cli(&["sandbox", "wait", id, "--timeout", "60"]);
        assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    }
    finish(server);
}

#[test]
fn pty_exec() {
    if !warren_testkit::require_root("pty_exec") {
        return;
    }
    let server = Server::start();
    let id = ok(server.cli(&["sandbox", "create"]));

    // -t: the command's stdio is a terminal, sized like ours.
    let size = nix::pty::Winsize {
        ws_row: 33,
        ws_col: 101,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let (status, out) = under_pty(
        &server,
        &[
            "sandbox",
            "exec",
            "-t",
            &id,
            "--",
            "sh",
            "-c",
            "tty; stty size",
        ],
        size,
        b"",
    );
    assert!(status.success(), "{status:?}: {out}");
    assert!(out.contains("/dev/pts/"), "{out:?}");
    assert!(out.contains("33 101"), "{out:?}");

    // -it: our keys go to the command (the local terminal is raw, so the
    // line is sent without waiting for our own line discipline) and the
    // terminal is restored afterwards.
    let (status, out) = under_pty(
        &server,
        &[
            "sandbox",
            "exec",
            "-it",
            &id,
            "--",
            "sh",
            "-c",
            "read x; echo got:$x; exit 5",
        ],
        size,
        b"hi\r",
    );
    assert_eq!(status.code(), Some(5), "{out}");
    assert!(out.contains("got:hi"), "{out:?}");

    finish(server);
}

/// Runs the CLI with a new pseudo-terminal as its stdin, stdout and stderr,
/// writes `input` once it runs, and returns its status and everything it
/// wrote. Checks that the terminal's settings are the same afterwards.
fn under_pty(
    server: &Server,
    args: &[&str],
    size: nix::pty::Winsize,
    input: &[u8],
) -> (std::process::ExitStatus, String) {
    use std::os::fd::OwnedFd;
    let pty = nix::pty::openpty(Some(&size), None).expect("openpty");
    let before = nix::sys::termios::tcgetattr(&pty.slave).expect("tcgetattr");
    let dup = |fd: &OwnedFd| Stdio::from(fd.try_clone().expect("dup the pty slave"));
    let mut child = server
        .command(args)
        .stdin(dup(&pty.slave))
        .stdout(dup(&pty.slave))
        .stderr(dup(&pty.slave))
        .spawn()
        .expect("run the CLI");
    let mut master = std::fs::File::from(pty.master);
    let mut reader = master.try_clone().expect("dup the pty master");
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        // Ends with EIO once every slave descriptor is closed.
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    if !input.is_empty() {
        master.write_all(input).expect("type into the pty");
    }
    let mut out = Vec::new();
    let exited = wait_until(Duration::from_secs(60), || {
        while let Ok(chunk) = rx.try_recv() {
            out.extend(chunk);
        }
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !exited {
        let _ = child.kill();
    }
    let status = child.wait().expect("wait for the CLI");
    let after = nix::sys::termios::tcgetattr(&pty.slave).expect("tcgetattr");
    drop(pty.slave);
    // The rest of the output, until the reader sees the pty close.
    while let Ok(chunk) = rx.recv_timeout(Duration::from_secs(5)) {
        out.extend(chunk);
    }
    let out = String::from_utf8_lossy(&out).into_owned();
    assert!(exited, "the CLI did not exit under the pty: {out}");
    assert_eq!(
        (before.local_flags, before.input_flags, before.output_flags),
        (after.local_flags, after.input_flags, after.output_flags),
        "the terminal was not restored"
    );
    (status, out)
}

/// Lines of `r`, read on a thread, as they arrive.
fn line_reader(r: impl Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// In the sandbox: HTTP on 127.0.0.1:8000 and :8001 answering
/// `ud=<X-Warren-User-Data>`, and a TCP echo on :8002.
const TUNNEL_APP: &str = r#"
import http.server, socket, threading
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        b = ("ud=" + str(self.headers.get("X-Warren-User-Data"))).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def log_message(self, *a):
        pass
def serve(c):
    with c:
        for d in iter(lambda: c.recv(65536), b""):
            c.sendall(d)
def echo():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 8002))
    s.listen()
    while True:
        threading.Thread(target=serve, args=(s.accept()[0],), daemon=True).start()
threading.Thread(target=echo, daemon=True).start()
s1 = http.server.ThreadingHTTPServer(("127.0.0.1", 8001), H)
threading.Thread(target=s1.serve_forever, daemon=True).start()
http.server.ThreadingHTTPServer(("127.0.0.1", 8000), H).serve_forever()
"#;

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `curl` through a tunnel URL, trusting `ca` and resolving the host to
/// loopback; returns (status, X-Warren-Error, body).
fn curl(ca: &Path, url: &str, headers: &[&str]) -> (u16, String, String) {
    let rest = url.strip_prefix("https://").expect("https url");
    let authority = rest.split('/').next().expect("authority");
    let (host, port) = authority.rsplit_once(':').unwrap_or((authority, "443"));
    let mut c = Command::new("curl");
    c.args(["-sS", "--max-time", "20", "-D", "-", "--cacert"])
        .arg(ca)
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1")]);
    for h in headers {
        c.args(["-H", h]);
    }
    let out = c.arg(url).output().expect("run curl");
    assert!(out.status.success(), "curl {url}: {}", describe(&out));
    let text = stdout(&out);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let error = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("x-warren-error:")
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default();
    (status, error, body.to_string())
}

/// Echoes `data` through a raw TCP tunnel endpoint.
fn tcp_echo(host: &str, port: u16, data: &[u8]) -> Vec<u8> {
    // The relay opens raw ports on its next route sync (about 1 s).
    let mut conn = None;
    wait_until(Duration::from_secs(15), || {
        conn = TcpStream::connect((host, port)).ok();
        conn.is_some()
    });
    let mut s = conn.unwrap_or_else(|| panic!("the relay never listened on {host}:{port}"));
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    s.write_all(data).expect("write");
    s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut back = Vec::new();
    s.read_to_end(&mut back).expect("read the echo");
    back
}

/// Creates the tunnel app's sandbox; checks what `create` prints.
fn create_tunnel_app(server: &Server) -> String {
    let out = server.cli(&[
        "sandbox",
        "create",
        "--port",
        "8000",
        "--port",
        "8001:token",
        "--tcp-port",
        "8002",
        "--ready-tcp",
        "8000",
        "--wait-ready=60",
        "--",
        "python3",
        "-c",
        TUNNEL_APP,
    ]);
    let err = stderr(&out);
    let id = ok(out);
    assert!(id.starts_with("sb-"), "{id}");
    assert!(err.contains("port 8000 -> https://"), "{err}");
    assert!(err.contains("port 8002 -> tcp://"), "{err}");
    id
}

/// Drives a sandbox's tunnels through the CLI and curl: HTTPS verified
/// against the CA from `tunnels --ca-out`, spoofed user data stripped,
/// connect tokens (missing, valid, revoked), raw TCP, readiness, and the
/// errors of bad flags.
fn check_tunnels(server: &Server, id: &str, work: &Path) {
    let ca = work.join("ca.pem");
    let ca_arg = ca.to_str().expect("utf-8");
    let text = ok(server.cli(&["sandbox", "tunnels", id]));
    assert!(text.contains("PORT  KIND"), "{text}");
    assert!(text.contains("required"), "{text}");
    let list: serde_json::Value = serde_json::from_str(&ok(
        server.cli(&["sandbox", "tunnels", id, "--json", "--ca-out", ca_arg])
    ))
    .expect("tunnels json");
    assert_eq!(list["relay_connected"], true, "{list}");
    let pem = std::fs::read_to_string(&ca).expect("the CA was written");
    assert!(pem.contains("BEGIN CERTIFICATE"));
    let by_port = |p: u64| {
        list["tunnels"]
            .as_array()
            .expect("tunnels")
            .iter()
            .find(|t| t["port"] == p)
            .unwrap_or_else(|| panic!("port {p} in {list}"))
            .clone()
    };
    let open_url = by_port(8000)["url"].as_str().expect("url").to_string();
    let token_url = by_port(8001)["url"].as_str().expect("url").to_string();
    let raw = by_port(8002)["raw"].clone();

    // Open port; a client's own X-Warren-User-Data never arrives.
    let (status, _, body) = curl(&ca, &open_url, &["X-Warren-User-Data: spoofed"]);
    assert_eq!((status, body.as_str()), (200, "ud=None"));

    // Token port.
    let (status, code, _) = curl(&ca, &token_url, &[]);
    assert_eq!((status, code.as_str()), (401, "token_required"));
    let tok: serde_json::Value = serde_json::from_str(&ok(server.cli(&[
        "sandbox",
        "connect-token",
        id,
        "--port",
        "8001",
        "--user-data",
        "alice",
        "--ttl",
        "600",
        "--json",
    ])))
    .expect("token json");
    let secret = tok["token"].as_str().expect("token");
    let token_id = tok["token_id"].as_str().expect("token id");
    let header = format!("X-Warren-Connect-Token: {secret}");
    let (status, _, body) = curl(&ca, &token_url, &[&header, "X-Warren-User-Data: mallory"]);
    assert_eq!((status, body.as_str()), (200, "ud=alice"));
    let (status, code, _) = curl(&ca, &token_url, &["X-Warren-Connect-Token: wct_bad.bad"]);
    assert_eq!((status, code.as_str()), (403, "token_invalid"));
    let listed = ok(server.cli(&["sandbox", "connect-tokens", id]));
    assert!(listed.contains(token_id), "{listed}");
    ok(server.cli(&["sandbox", "revoke-token", id, token_id]));
    let refused = wait_until(Duration::from_secs(15), || {
        curl(&ca, &token_url, &[&header]).0 == 403
    });
    assert!(refused, "a revoked token still passes");
    let out = server.cli(&["sandbox", "connect-token", id, "--port", "8002"]);
    one_line_error(&out, "(port_not_exposed)");

    // Raw TCP.
    let host = raw["host"].as_str().expect("raw host");
    let port = raw["port"].as_u64().expect("raw port") as u16;
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    assert!(tcp_echo(host, port, &data) == data, "the raw echo differs");

    // Readiness and details.
    let out = server.cli(&["sandbox", "wait-ready", id, "--timeout", "5"]);
    assert_eq!(ok(out), "ready");
    let details = ok(server.cli(&["sandbox", "get", id]));
    assert!(
        details.contains("ready:     yes (probe: tcp 8000)"),
        "{details}"
    );
    assert!(details.contains("8001 https (token)"), "{details}");

    // Bad flags are usage errors (exit 2) before any request.
    let out = server.cli(&["sandbox", "create", "--allow-cidr", "10.0.0.1/8"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    one_line_error(&out, "(usage)");
}

fn tunnel_tools(test: &str) -> bool {
    warren_testkit::require_root(test)
        && warren_testkit::require(
            test,
            have("curl") && have("python3"),
            "needs curl and python3 on the host (the host image runs the app)",
        )
}

/// Issue #7 through the binary: a sandbox's ports through `warren serve`'s
/// in-process relay, on free loopback ports.
#[test]
fn tunnels_through_the_cli() {
    if !tunnel_tools("tunnels_through_the_cli") {
        return;
    }
    let raw = free_port().to_string();
    let server = Server::launch(|_, _| {
        [
            "--no-network",
            "--relay-https-listen",
            "127.0.0.1:0",
            "--relay-raw-ports",
            &format!("{raw}-{raw}"),
        ]
        .map(String::from)
        .to_vec()
    });
    let log = server.log();
    assert!(log.contains("warren: relay CA "), "{log}");
    let id = create_tunnel_app(&server);
    let work = tempfile::tempdir().expect("tempdir");
    check_tunnels(&server, &id, work.path());
    // Ended sandboxes get clean errors.
    ok(server.cli(&["sandbox", "terminate", &id]));
    let out = server.cli(&["sandbox", "wait-ready", &id, "--timeout", "5"]);
    one_line_error(&out, "(sandbox_terminated)");
    finish(server);
}

/// A `warren relay` process on its own: stopped on drop.
struct RelayProcess(Child);

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let pid = Pid::from_raw(self.0.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        if !wait_until(Duration::from_secs(10), || {
            matches!(self.0.try_wait(), Ok(Some(_)))
        }) {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = self.0.wait();
        }
    }
}

/// Issue #7 with the relay in its own process: `warren relay` asks the
/// control plane for routes, the node dials its link, and the same checks
/// pass; a SIGTERM stops it cleanly.
#[test]
fn separate_relay_through_the_cli() {
    if !tunnel_tools("separate_relay_through_the_cli") {
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let (https, link, raw) = (free_port(), free_port(), free_port());
    let mut relay = None;
    let server = Server::launch(|data, api_port| {
        // What the control plane would make at first start, written first
        // so the relay can be started before it.
        let secrets = data.join("relay-secrets.json");
        std::fs::write(
            &secrets,
            r#"{"token_key":"tk-e2e-0123456789","relay_secret":"rs-e2e-0123456789","node_secret":"ns-e2e-0123456789"}"#,
        )
        .expect("write the secrets");
        let tls = work.path().join("relay-tls");
        let log = std::fs::File::create(work.path().join("relay.log")).expect("relay log");
        let child = Command::new(BIN)
            .args([
                "relay",
                "--control-url",
                &format!("http://127.0.0.1:{api_port}"),
            ])
            .arg("--secrets")
            .arg(&secrets)
            .arg("--tls-dir")
            .arg(&tls)
            .args(["--https-listen", &format!("127.0.0.1:{https}")])
            .args(["--link-listen", &format!("127.0.0.1:{link}")])
            .args(["--raw-ports", &format!("{raw}-{raw}")])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone"))
            .stderr(log)
            .spawn()
            .expect("start warren relay");
        let mut p = RelayProcess(child);
        let up = wait_until(Duration::from_secs(30), || {
            TcpStream::connect(("127.0.0.1", link)).is_ok() || matches!(p.0.try_wait(), Ok(Some(_)))
        });
        let relay_log = std::fs::read_to_string(work.path().join("relay.log")).unwrap_or_default();
        assert!(
            up && matches!(p.0.try_wait(), Ok(None)),
            "the relay did not come up:\n{relay_log}"
        );
        relay = Some(p);
        vec![
            "--no-network".into(),
            "--relay-link".into(),
            format!("127.0.0.1:{link}"),
            "--relay-ca".into(),
            tls.join("ca.pem").to_string_lossy().into_owned(),
            "--relay-public-https-port".into(),
            https.to_string(),
            "--relay-raw-ports".into(),
            format!("{raw}-{raw}"),
        ]
    });
    let mut relay = relay.expect("relay started");
    let id = create_tunnel_app(&server);
    // The node's link comes up in the background.
    let connected = wait_until(Duration::from_secs(30), || {
        let out = server.cli(&["sandbox", "tunnels", &id, "--json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .is_ok_and(|v| v["relay_connected"] == true)
    });
    assert!(
        connected,
        "the node never linked to the relay:\n{}\n{}",
        server.log(),
        std::fs::read_to_string(work.path().join("relay.log")).unwrap_or_default()
    );
    check_tunnels(&server, &id, work.path());
    // SIGTERM stops the relay gracefully.
    let pid = Pid::from_raw(relay.0.id() as i32);
    kill(pid, Signal::SIGTERM).expect("SIGTERM the relay");
    assert!(wait_until(Duration::from_secs(15), || matches!(
        relay.0.try_wait(),
        Ok(Some(s)) if s.success()
    )));
    drop(relay);
    finish(server);
}

/// Issue #8 through the binary: `warren image export -o FILE` and `-o -`
/// (the same archive), `warren image import` of the export (the same id),
/// `warren image push` with plain progress lines (then again: nothing
/// uploaded) and with bars under a terminal, a second server pulling the
/// pushed image and running a sandbox from it, and one-line errors.
#[test]
fn images_export_import_push() {
    if !warren_testkit::require_root("images_export_import_push")
        || !warren_testkit::registry::require_tools("images_export_import_push")
    {
        return;
    }
    let (reg, work) = registry_with_image(4 << 20, 11, &["e2e/src:v1"]);
    let host = reg.host();
    let registries = serde_json::json!({
        "default_registry": "127.0.0.1:9",
        "registries": {host.clone(): {"insecure": true}, "127.0.0.1:9": {"insecure": true}}
    })
    .to_string();
    let with_registry = |data: &Path| {
        std::fs::write(data.join("registries.json"), &registries).expect("registries.json");
    };
    let server = Server::start_with(with_registry);
    let source = format!("{host}/e2e/src:v1");
    let id = ok(server.cli(&["image", "pull", &source]));

    // Export to a file and to stdout: the same bytes, an OCI layout.
    let file = work.path().join("exported.tar");
    let file_arg = file.to_str().expect("utf-8 path");
    let out = server.cli(&["image", "export", &source, "-o", file_arg]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(stderr(&out).contains("exported "), "{}", describe(&out));
    assert!(!work.path().join("exported.tar.partial").exists());
    let bytes = std::fs::read(&file).expect("exported archive");
    let piped = server.cli(&["image", "export", &source, "-o", "-"]);
    assert!(piped.status.success(), "{}", describe(&piped));
    assert!(piped.stdout == bytes, "-o - wrote other bytes");
    let mut names = Vec::new();
    for entry in tar::Archive::new(&bytes[..]).entries().expect("tar") {
        names.push(
            entry
                .expect("entry")
                .path()
                .expect("path")
                .display()
                .to_string(),
        );
    }
    assert!(names.contains(&"oci-layout".to_string()), "{names:?}");

    // Import of the export, after the image is gone: the same id; and
    // from stdin under another name.
    ok(server.cli(&["image", "rm", &source]));
    let imported = ok(server.cli(&["image", "import", file_arg]));
    assert_eq!(imported, id);
    let piped_import = server.cli_stdin(&["image", "import", "-", "--name", "piped:v1"], &bytes);
    assert_eq!(ok(piped_import), id);
    ok(server.cli(&["image", "rm", "piped:v1"]));
    assert!(ok(server.cli(&["image", "ls"])).contains(&source));

    // Push: plain progress lines; then again, nothing uploaded.
    let target = format!("{host}/e2e/pushed:v1");
    let out = server.cli(&["image", "push", &source, &target, "--insecure"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        stdout(&out).starts_with(&format!("{target}@sha256:")),
        "{}",
        describe(&out)
    );
    let err = stderr(&out);
    for want in ["3 blob(s)", ": pushed", "3 blob(s) uploaded"] {
        assert!(err.contains(want), "no {want:?} in: {err}");
    }
    let again = server.cli(&["image", "push", &source, &target]);
    assert!(again.status.success(), "{}", describe(&again));
    let err = stderr(&again);
    for want in [
        "already in the registry",
        "0 blob(s) uploaded",
        "3 already there",
    ] {
        assert!(err.contains(want), "no {want:?} in: {err}");
    }
    // Under a terminal: progress bars.
    let size = nix::pty::Winsize {
        ws_row: 40,
        ws_col: 160,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let (status, tty_out) = under_pty(
        &server,
        &["image", "push", &source, &format!("{host}/e2e/tty:v1")],
        size,
        b"",
    );
    assert!(status.success(), "{tty_out}");
    assert!(tty_out.contains("pushed "), "{tty_out:?}");

    // A second server pulls the pushed image: same id, and it runs.
    let second = Server::start_with(with_registry);
    let pulled = ok(second.cli(&["image", "pull", &target]));
    assert_eq!(pulled, id);
    let out = ok(second.cli(&["run", "--image", &target, "--", "cat", "/etc/passwd"]));
    assert!(out.contains("app:x:1000"), "{out}");
    finish(second);

    // One-line errors with their codes.
    let bad = server.cli(&["image", "export", "host", "-o", file_arg]);
    one_line_error(&bad, "image_not_exportable");
    let bad = server.cli(&["image", "push", &source, "Not A Target"]);
    one_line_error(&bad, "invalid");
    // (After the `resolved` line: the image itself was found.)
    let bad = server.cli(&["image", "push", &source, "127.0.0.1:9/nothing/here:1"]);
    assert!(!bad.status.success(), "{}", describe(&bad));
    let last = stderr(&bad).lines().last().unwrap_or_default().to_string();
    assert!(
        last.starts_with("warren: ") && last.contains("registry_unavailable"),
        "{}",
        describe(&bad)
    );
    finish(server);
}
/// Issue #8 through the binary: `warren image build -f FILE -t NAME DIR`
/// with the recipe outside the context and a `.warrenignore`; step lines
/// and the RUN output on stderr, the image id on stdout; a sandbox from
/// the result sees the files and the environment; a rebuild is all cached;
/// a failing RUN exits non-zero with the server's code and the exit code.
#[test]
fn image_build_through_the_cli() {
    if !warren_testkit::require_root("image_build_through_the_cli") {
        return;
    }
    let server = Server::start();
    let work = tempfile::tempdir().expect("tempdir");
    let ctx = work.path().join("ctx");
    std::fs::create_dir_all(ctx.join("app")).expect("mkdir");
    std::fs::write(ctx.join("app/msg.txt"), "from the context\n").expect("write");
    std::fs::write(ctx.join("app/skip.tmp"), "ignored\n").expect("write");
    std::fs::write(
        ctx.join(".warrenignore"),
        "# scratch files\n*.tmp\napp/*.tmp\n",
    )
    .expect("write");
    let recipe = work.path().join("Recipe");
    std::fs::write(
        &recipe,
        "FROM host\n\
         COPY app/ /opt/app/\n\
         RUN cat /opt/app/msg.txt > /opt/app/out.txt && \\\n    echo built-from-cli\n\
         ENV APP_MODE=cli\n",
    )
    .expect("write the recipe");
    let recipe = recipe.to_str().expect("utf-8 path");
    let ctx = ctx.to_str().expect("utf-8 path");

    let out = server.cli(&["image", "build", "-f", recipe, "-t", "cli-app:v1", ctx]);
    assert!(out.status.success(), "{}", describe(&out));
    let id = stdout(&out).trim().to_string();
    assert!(id.starts_with("sha256:"), "{}", describe(&out));
    let err = stderr(&out);
    for want in [
        "[1/4] FROM host",
        "[2/4] COPY app/ /opt/app/",
        "built-from-cli",
        "built cli-app:v1",
    ] {
        assert!(err.contains(want), "no {want:?} in: {err}");
    }

    let out = ok(server.cli(&[
        "run",
        "--image",
        "cli-app:v1",
        "--",
        "sh",
        "-c",
        "cat /opt/app/out.txt; echo \"mode=$APP_MODE\"; ls /opt/app",
    ]));
    assert!(out.contains("from the context\nmode=cli\n"), "{out}");
    assert!(
        out.contains("msg.txt") && !out.contains("skip.tmp"),
        "{out}"
    );

    // Unchanged: every step from the cache, the same image.
    let out = server.cli(&["image", "build", "-f", recipe, "-t", "cli-app:v2", ctx]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(stdout(&out).trim(), id);
    assert_eq!(
        stderr(&out).matches("(cached)").count(),
        4,
        "{}",
        describe(&out)
    );

    // A failing RUN: non-zero exit, one error line with the code.
    let bad = work.path().join("Bad");
    std::fs::write(&bad, "FROM host\nRUN echo going-down; exit 3\n").expect("write");
    let out = server.cli(&[
        "image",
        "build",
        "-f",
        bad.to_str().expect("utf-8"),
        "-t",
        "bad:v1",
        ctx,
    ]);
    assert!(!out.status.success(), "{}", describe(&out));
    let err = stderr(&out);
    assert!(err.contains("going-down"), "{err}");
    assert!(err.contains("exit code 3"), "{err}");
    assert!(err.contains("(build_step_failed)"), "{err}");
    // A recipe error names its line.
    std::fs::write(&bad, "FROM host\nADD x /y\n").expect("write");
    let out = server.cli(&[
        "image",
        "build",
        "-f",
        bad.to_str().expect("utf-8"),
        "-t",
        "bad:v1",
        ctx,
    ]);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        stderr(&out).contains("line 2") && stderr(&out).contains("(invalid_recipe)"),
        "{}",
        describe(&out)
    );
    finish(server);
}
