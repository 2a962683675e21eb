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
    url: String,
    token: String,
    dir: Option<tempfile::TempDir>,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::Builder::new()
            .prefix("warren-e2e-")
            .tempdir_in("/var/tmp")
            .expect("create the data dir");
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
            l.local_addr().expect("local addr").port()
        };
        let log = std::fs::File::create(dir.path().join("server.log")).expect("create the log");
        let child = Command::new(BIN)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log"))
            .stderr(log)
            .spawn()
            .expect("start warren serve");
        let mut s = Server {
            child,
            url: format!("http://127.0.0.1:{port}"),
            token: String::new(),
            dir: Some(dir),
        };
        let token_path = s.data_dir().join("admin-token");
        let ready = wait_until(Duration::from_secs(60), || {
            healthy(port) && token_path.exists() || s.exited()
        });
        assert!(
            ready && !s.exited(),
            "the server did not come up:\n{}",
            s.log()
        );
        s.token = std::fs::read_to_string(&token_path)
            .expect("read the admin token")
            .trim()
            .to_string();
        s
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
        Command::new(BIN)
            .args(args)
            .env("WARREN_URL", &self.url)
            .env("WARREN_TOKEN", token)
            .env_remove("WARREN_DATA_DIR")
            .stdin(Stdio::null())
            .output()
            .expect("run the warren CLI")
    }
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

#[test]
fn cli_against_a_real_server() {
    if !warren_testkit::require_root("cli_against_a_real_server") {
        return;
    }
    let server = Server::start();
    let marker = server
        .root()
        .file_name()
        .expect("tempdir has a name")
        .to_string_lossy()
        .into_owned();

    // create prints only the id.
    let id = ok(server.cli(&["sandbox", "create", "--tag", "e2e=one"]));
    assert!(
        id.starts_with("sb-") && !id.contains(char::is_whitespace),
        "{id:?}"
    );
    let other = ok(server.cli(&["sandbox", "create", "--tag", "e2e=two", "--name", "other"]));

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

    drop(server);
    let leaks: Vec<String> = warren_testkit::leaks(&marker)
        .into_iter()
        .filter(|l| !l.starts_with("process:"))
        .collect();
    assert!(leaks.is_empty(), "left behind: {leaks:#?}");
}
