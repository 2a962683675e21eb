//! `api-memory`: memory snapshots through a real `warren serve` with its
//! in-process relay, measured the way a user sees them: up to the first
//! byte of an HTTP answer through the sandbox's tunnel.
//!
//! The sandboxes run a small Python HTTP server as their main command on
//! 0.0.0.0:8000, exposed as an encrypted port. It counts requests in
//! memory and answers with the count, so every answer shows whether the
//! process state survived.
//!
//! - pause → resume → first byte: `POST pause`, then from sending
//!   `POST resume` to the first byte of a `200` through the tunnel (a new
//!   TLS connection to the relay on loopback). Pause and resume are also
//!   reported alone.
//! - the same with the server started as a background exec (`POST
//!   .../execs`, as an app builder starts its dev server): the pause
//!   carries the exec and its streams.
//! - auto-resume: a sandbox with `auto_resume`, paused; a plain HTTPS
//!   request through its tunnel until its first byte (the relay holds the
//!   connection while the sandbox resumes).
//! - fork into 10: `POST fork {count: 10}`; the call alone, and until all
//!   10 copies answered through their own tunnels (copies inherit the
//!   source's ports). At most 3 runs.
//! - snapshot-memory (the source keeps running), then `POST /v1/sandboxes
//!   {from_memory_snapshot}` until the first byte through the restored
//!   sandbox's tunnel.
//!
//! Networked sandboxes (the default) live in a private network namespace
//! the bench enters first, with the server: the veths, nftables table and
//! relay ports vanish with the process and no packet leaves loopback.
//! Every sandbox and memory snapshot made is removed before the server
//! stops.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use futures_util::future::join_all;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren_proto::api::{CreateSandboxRequest, SandboxState};
use warren_proto::network::PortSpec;
use warren_proto::snapshot::SnapshotMemoryRequest;

use super::{ApiServer, IDLE_LIFETIME_SECS};
use crate::rootfs;
use crate::shutdown::Shutdown;
use crate::stats::{self, json_num, Row, Summary};

#[derive(Args, Debug)]
pub struct ApiMemoryArgs {
    /// Measured rounds of each series (fork: at most 3).
    #[arg(long, default_value_t = 7, value_parser = crate::parse_positive)]
    pub runs: usize,
    /// Run the server with --no-network (sandboxes get no interface).
    #[arg(long)]
    pub no_network: bool,
}

/// The in-sandbox server: counts GETs in memory, answers with the count.
/// HTTP/1.0 (the default), so every connection carries one request.
const SERVER: &str = r#"import http.server
n = 0
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        global n
        n += 1
        b = str(n).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def log_message(self, *a):
        pass
http.server.HTTPServer(("0.0.0.0", 8000), H).serve_forever()
"#;
const PYTHON: &str = "/usr/bin/python3";
const CRIU: &str = "/usr/local/sbin/criu";
const PORT: u16 = 8000;
const FORK_COUNT: u32 = 10;
const MAX_FORK_RUNS: usize = 3;
/// Unrecorded pause/resume cycles before each pause series.
const WARMUP: usize = 1;
/// Bound on one HTTPS exchange through the relay.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on a tunnel answering `200` (a new, resumed or restored sandbox).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between attempts while a tunnel does not answer `200` yet.
const RETRY_DELAY: Duration = Duration::from_millis(5);
/// Lifetime of the memory snapshots taken (each is deleted right away).
const SNAPSHOT_TTL_SECS: u64 = 600;

/// The relay's HTTPS front on loopback and a TLS client trusting its CA.
struct Relay {
    addr: SocketAddr,
    tls: tokio_rustls::TlsConnector,
    /// `<base-domain>`: a sandbox's tunnel host is `<id>-<port>.<domain>`.
    domain: String,
}

impl Relay {
    fn host(&self, id: &str) -> String {
        format!("{id}-{PORT}.{}", self.domain)
    }
}

/// One answer through a tunnel.
struct Answer {
    status: u16,
    /// When its first byte arrived.
    first_byte: Instant,
    /// `X-Warren-Error` of a relay error page.
    error: Option<String>,
    body: String,
}

/// `GET /` on a new TLS connection to the relay, naming `host` (SNI and
/// `Host`). One request per connection, read to the end.
async fn get(relay: &Relay, host: &str) -> Result<Answer> {
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(relay.addr)
            .await
            .context("connect to the relay")?;
        tcp.set_nodelay(true)?;
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .with_context(|| format!("server name {host}"))?;
        let mut s = relay
            .tls
            .connect(name, tcp)
            .await
            .context("TLS handshake with the relay")?;
        s.write_all(
            format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .context("send the request")?;
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.context("read the answer")?;
        let first_byte = Instant::now();
        ensure!(n > 0, "the relay closed the connection without an answer");
        buf.truncate(n);
        // The relay may close without close_notify after the body.
        if let Err(e) = s.read_to_end(&mut buf).await {
            if e.kind() != std::io::ErrorKind::UnexpectedEof {
                return Err(e).context("read the answer");
            }
        }
        let text = String::from_utf8_lossy(&buf);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .with_context(|| format!("malformed answer {text:?}"))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("malformed status line in {head:?}"))?;
        let error = head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("x-warren-error")
                .then(|| v.trim().to_string())
        });
        Ok(Answer {
            status,
            first_byte,
            error,
            body: body.to_string(),
        })
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .with_context(|| format!("no answer from {host} within {REQUEST_TIMEOUT:?}"))?
}

/// The first `200` through `host`'s tunnel: (time from `t0` to its first
/// byte, the count it carries, the attempts it took). Earlier attempts
/// that fail or answer otherwise are retried until [`ANSWER_TIMEOUT`].
async fn first_ok(relay: &Relay, host: &str, t0: Instant) -> Result<(Duration, u64, usize)> {
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let why = match get(relay, host).await {
            Ok(a) if a.status == 200 => {
                let count = a
                    .body
                    .trim()
                    .parse()
                    .with_context(|| format!("{host} answered {:?}, not a count", a.body))?;
                return Ok((a.first_byte - t0, count, attempts));
            }
            Ok(a) => format!(
                "status {} ({})",
                a.status,
                a.error.as_deref().unwrap_or("no X-Warren-Error")
            ),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!("{host} did not answer 200 within {ANSWER_TIMEOUT:?}; last: {why}");
        }
        tokio::time::sleep(RETRY_DELAY).await;
    }
}

#[derive(Default)]
struct Series {
    pause: Vec<Duration>,
    resume: Vec<Duration>,
    resume_fb: Vec<Duration>,
    exec_pause: Vec<Duration>,
    exec_resume_fb: Vec<Duration>,
    auto_pause: Vec<Duration>,
    auto_fb: Vec<Duration>,
    fork_call: Vec<Duration>,
    fork_all: Vec<Duration>,
    snapshot: Vec<Duration>,
    restore_call: Vec<Duration>,
    restore_fb: Vec<Duration>,
    /// Measured first-byte series whose first attempt was not a `200`.
    retried: Vec<String>,
    snapshot_bytes: Option<u64>,
}

/// What the bench made and must remove.
#[derive(Default)]
struct Made {
    sandboxes: Vec<String>,
    snapshots: Vec<String>,
}

pub fn run(args: &ApiMemoryArgs, data: &Path, shutdown: &Shutdown) -> Result<()> {
    ensure!(
        Path::new(CRIU).is_file(),
        "needs CRIU 4.x at {CRIU} (scripts/install-criu.sh)"
    );
    ensure!(Path::new(PYTHON).exists(), "needs {PYTHON} on the host");
    if !args.no_network {
        crate::hostns::private_network()?;
    }
    let rootfs_dir = data.join("rootfs");
    rootfs::build(&rootfs::find_busybox()?, &rootfs_dir)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let relay_port = {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("bind a free port")?;
        l.local_addr().context("local address")?.port()
    };
    let listen = format!("127.0.0.1:{relay_port}");
    let mut serve_args = vec!["--relay-https-listen", listen.as_str()];
    if args.no_network {
        serve_args.push("--no-network");
    }
    let server = ApiServer::start_with(data, &rootfs_dir, rt, &serve_args)?;

    println!("# warren-bench api-memory");
    println!(
        "sandboxes: image host, main command {PYTHON} (an in-memory request counter on \
         0.0.0.0:{PORT}), memory_snapshots, encrypted_ports [{PORT}]; network: {}; tunnels: \
         the in-process relay on {listen}, a new TLS connection per request; {} runs (fork: {}, \
         {FORK_COUNT} copies) after {WARMUP} warm-up pause/resume; load average at start: {}",
        if args.no_network {
            "none (--no-network)"
        } else {
            "yes (private network namespace)"
        },
        args.runs,
        args.runs.min(MAX_FORK_RUNS),
        super::loadavg()
    );

    let mut made = Made::default();
    let res = measure(args, &server, relay_port, shutdown, &mut made);
    let cleaned = cleanup(&server, &made);
    let stopped = server.shutdown();
    let s = res?;
    cleaned?;
    stopped?;

    println!();
    let rows = [
        ("pause", &s.pause),
        ("resume", &s.resume),
        ("resume-fb", &s.resume_fb),
        ("exec-pause", &s.exec_pause),
        ("exec-resume-fb", &s.exec_resume_fb),
        ("auto-pause", &s.auto_pause),
        ("auto-fb", &s.auto_fb),
        ("fork10-call", &s.fork_call),
        ("fork10-all", &s.fork_all),
        ("snap-memory", &s.snapshot),
        ("restore", &s.restore_call),
        ("restore-fb", &s.restore_fb),
    ];
    let table: Vec<Row> = rows
        .iter()
        .map(|(what, v)| Row {
            runtime: "api",
            what,
            summary: Summary::of(v),
            note: None,
        })
        .collect();
    stats::print_table(&table);
    println!();
    println!(
        "pause/resume: POST pause; POST resume alone; resume-fb: from sending POST resume to \
         the first byte of a 200 through the tunnel. exec-*: the same with the server \
         started as a background exec, not the main command. auto-*: a sandbox with auto_resume: POST \
         pause; from sending a GET through the paused sandbox's tunnel to its first byte. \
         fork10-call: POST fork {{count: {FORK_COUNT}}}; fork10-all: from sending it until all \
         {FORK_COUNT} copies answered through their tunnels. snap-memory: POST snapshot-memory \
         (the source keeps running); restore: POST /v1/sandboxes {{from_memory_snapshot}}; \
         restore-fb: from sending it to the first byte through the new sandbox's tunnel."
    );
    if let Some(b) = s.snapshot_bytes {
        println!("memory snapshot size: {:.1} MB", b as f64 / 1e6);
    }
    if s.retried.is_empty() {
        println!("every timed request was answered 200 at its first attempt");
    } else {
        println!("timed requests that needed more than one attempt (the retries are in the time):");
        for r in &s.retried {
            println!("  {r}");
        }
    }
    let p = |v: &[Duration], f: fn(&Summary) -> f64| json_num(Summary::of(v).as_ref().map(f));
    let p50 = |s: &Summary| s.p50;
    let p99 = |s: &Summary| s.p99;
    let fields: Vec<(String, Value)> = vec![
        ("bench".into(), json!("api-memory")),
        ("runs".into(), json!(args.runs)),
        ("network".into(), json!(!args.no_network)),
        ("pause_p50_ms".into(), p(&s.pause, p50)),
        ("resume_p50_ms".into(), p(&s.resume, p50)),
        ("resume_first_byte_p50_ms".into(), p(&s.resume_fb, p50)),
        ("resume_first_byte_p99_ms".into(), p(&s.resume_fb, p99)),
        ("exec_pause_p50_ms".into(), p(&s.exec_pause, p50)),
        (
            "exec_resume_first_byte_p50_ms".into(),
            p(&s.exec_resume_fb, p50),
        ),
        ("auto_resume_first_byte_p50_ms".into(), p(&s.auto_fb, p50)),
        ("auto_resume_first_byte_p99_ms".into(), p(&s.auto_fb, p99)),
        ("fork10_call_p50_ms".into(), p(&s.fork_call, p50)),
        ("fork10_all_answered_p50_ms".into(), p(&s.fork_all, p50)),
        ("snapshot_memory_p50_ms".into(), p(&s.snapshot, p50)),
        ("restore_call_p50_ms".into(), p(&s.restore_call, p50)),
        ("restore_first_byte_p50_ms".into(), p(&s.restore_fb, p50)),
        ("snapshot_bytes".into(), json!(s.snapshot_bytes)),
        ("retried_requests".into(), json!(s.retried.len())),
    ];
    println!("{}", stats::json_object(&fields));
    Ok(())
}

/// Creates a checkpointable server sandbox (recorded in `made`).
fn create_server(server: &ApiServer, auto_resume: bool, made: &mut Made) -> Result<String> {
    create_with(server, auto_resume, true, made)
}

/// Creates a checkpointable sandbox with the server as its main command
/// (`as_main`), or idle with the server started as a background exec.
fn create_with(
    server: &ApiServer,
    auto_resume: bool,
    as_main: bool,
    made: &mut Made,
) -> Result<String> {
    let argv = vec![PYTHON.into(), "-c".into(), SERVER.into()];
    let sb = server.block_on(server.client().create_sandbox(&CreateSandboxRequest {
        image: Some("host".into()),
        command: as_main.then(|| argv.clone()),
        timeout_secs: Some(IDLE_LIFETIME_SECS),
        memory_snapshots: true,
        auto_resume,
        encrypted_ports: vec![PortSpec::Port(PORT)],
        ..Default::default()
    }))?;
    made.sandboxes.push(sb.id.clone());
    ensure!(
        sb.state == SandboxState::Running,
        "sandbox {} is {:?}",
        sb.id,
        sb.state
    );
    if !as_main {
        let start = warren_proto::api::StreamExecStart {
            command: argv,
            ..Default::default()
        };
        server.block_on(server.client().start_background_exec(&sb.id, &start))?;
    }
    Ok(sb.id)
}

/// The relay as `id`'s tunnel list describes it: its CA and domain (the
/// address is the loopback port the server was told to listen on).
fn relay_of(server: &ApiServer, id: &str, relay_port: u16) -> Result<Relay> {
    let list = server.block_on(server.client().tunnels(id))?;
    let t = list
        .tunnels
        .iter()
        .find(|t| t.port == PORT)
        .with_context(|| format!("{id} has no tunnel for port {PORT}"))?;
    let tls = t.tls.as_ref().context("the tunnel has no TLS endpoint")?;
    ensure!(
        tls.port == relay_port,
        "the tunnel is served on port {}, not {relay_port}",
        tls.port
    );
    let domain = t
        .host
        .strip_prefix(&format!("{id}-{PORT}."))
        .with_context(|| format!("unexpected tunnel host {}", t.host))?
        .to_string();
    let ca = list
        .ca_pem
        .as_deref()
        .context("the server did not hand out its relay CA")?;
    let cfg = warren_relay::tls::client_config(ca.as_bytes(), vec![b"http/1.1".to_vec()])?;
    Ok(Relay {
        addr: (Ipv4Addr::LOCALHOST, relay_port).into(),
        tls: tokio_rustls::TlsConnector::from(cfg),
        domain,
    })
}

/// The count `id` answers through its tunnel now (waits for a first answer).
fn count_now(server: &ApiServer, relay: &Relay, id: &str) -> Result<u64> {
    let (_, count, _) = server
        .block_on(first_ok(relay, &relay.host(id), Instant::now()))
        .with_context(|| {
            format!(
                "the server in {id} did not answer ({})",
                describe(server, id)
            )
        })?;
    Ok(count)
}

/// The sandbox's state and the end of its log, for error messages.
fn describe(server: &ApiServer, id: &str) -> String {
    let client = server.client();
    let state = match server.block_on(client.get_sandbox(id)) {
        Ok(sb) => format!("{:?} {:?}", sb.state, sb.termination),
        Err(e) => format!("state unknown: {e}"),
    };
    let log = server
        .block_on(client.logs(id, Some(2048)))
        .map(|(b, _)| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    format!("{state}; log: {log:?}")
}

/// Checks that `count` continues the sandbox's count (`last`).
fn continued(what: &str, id: &str, last: u64, count: u64) -> Result<()> {
    ensure!(
        count > last,
        "{what}: {id} answered count {count} after {last}: its memory state was lost"
    );
    Ok(())
}

/// One pause of `id`, then its resume until the first byte through its
/// tunnel (checking that its count went on from `last`): the pause, the
/// resume call, the first byte from sending the resume, and how many
/// requests that took.
fn pause_resume(
    server: &ApiServer,
    relay: &Relay,
    id: &str,
    last: &mut u64,
    what: &str,
) -> Result<(Duration, Duration, Duration, usize)> {
    let client = server.client();
    let t = Instant::now();
    let sb = server.block_on(client.pause_sandbox(id))?;
    let pause = t.elapsed();
    ensure!(
        sb.state == SandboxState::Paused,
        "pause: {id} is {:?}",
        sb.state
    );
    let t0 = Instant::now();
    let sb = server.block_on(client.resume_sandbox(id))?;
    let resume = t0.elapsed();
    ensure!(
        sb.state == SandboxState::Running,
        "resume: {id} is {:?}",
        sb.state
    );
    let (fb, count, attempts) = server.block_on(first_ok(relay, &relay.host(id), t0))?;
    continued(what, id, *last, count)?;
    *last = count;
    Ok((pause, resume, fb, attempts))
}

fn note_retry(s: &mut Series, what: &str, run: usize, attempts: usize) {
    if attempts > 1 {
        s.retried
            .push(format!("{what} run {}: {attempts} attempts", run + 1));
    }
}

fn measure(
    args: &ApiMemoryArgs,
    server: &ApiServer,
    relay_port: u16,
    shutdown: &Shutdown,
    made: &mut Made,
) -> Result<Series> {
    let client = server.client();
    let mut s = Series::default();

    // 1. pause → resume → first byte.
    let a = create_server(server, false, made)?;
    let relay = relay_of(server, &a, relay_port)?;
    let mut last = count_now(server, &relay, &a)?;
    eprintln!(
        "server sandbox {a} answers through https://{}",
        relay.host(&a)
    );
    for i in 0..WARMUP + args.runs {
        shutdown.check()?;
        let (pause, resume, fb, attempts) =
            pause_resume(server, &relay, &a, &mut last, "pause/resume")?;
        if i >= WARMUP {
            s.pause.push(pause);
            s.resume.push(resume);
            s.resume_fb.push(fb);
            note_retry(&mut s, "resume-fb", i - WARMUP, attempts);
        }
    }
    eprintln!("pause/resume: done");

    // 1b. The same with the server as a background exec.
    let d = create_with(server, false, false, made)?;
    let mut last_d = count_now(server, &relay, &d)?;
    for i in 0..WARMUP + args.runs {
        shutdown.check()?;
        let (pause, _, fb, attempts) =
            pause_resume(server, &relay, &d, &mut last_d, "exec pause/resume")?;
        if i >= WARMUP {
            s.exec_pause.push(pause);
            s.exec_resume_fb.push(fb);
            note_retry(&mut s, "exec-resume-fb", i - WARMUP, attempts);
        }
    }
    eprintln!("background-exec pause/resume: done");
    server.block_on(client.terminate_sandbox(&d))?;
    made.sandboxes.retain(|x| *x != d);

    // 2. auto-resume through the tunnel.
    let b = create_server(server, true, made)?;
    let host_b = relay.host(&b);
    let mut last_b = count_now(server, &relay, &b)?;
    for i in 0..WARMUP + args.runs {
        shutdown.check()?;
        let t = Instant::now();
        let sb = server.block_on(client.pause_sandbox(&b))?;
        let pause = t.elapsed();
        ensure!(
            sb.state == SandboxState::Paused,
            "pause: {b} is {:?}",
            sb.state
        );
        let t0 = Instant::now();
        let (fb, count, attempts) = server.block_on(first_ok(&relay, &host_b, t0))?;
        continued("auto-resume", &b, last_b, count)?;
        last_b = count;
        let state = server.block_on(client.get_sandbox(&b))?.state;
        ensure!(
            state == SandboxState::Running,
            "auto-resume: {b} is {state:?} after answering"
        );
        if i >= WARMUP {
            s.auto_pause.push(pause);
            s.auto_fb.push(fb);
            note_retry(&mut s, "auto-fb", i - WARMUP, attempts);
        }
    }
    eprintln!("auto-resume: done");
    // Not needed any more: fewer processes during the fork series.
    server.block_on(client.terminate_sandbox(&b))?;
    made.sandboxes.retain(|x| *x != b);

    // 3. fork into 10 (source: the first sandbox, running).
    for i in 0..args.runs.min(MAX_FORK_RUNS) {
        shutdown.check()?;
        let before = count_now(server, &relay, &a)?;
        let t0 = Instant::now();
        let copies = server.block_on(client.fork_sandbox(&a, FORK_COUNT));
        let call = t0.elapsed();
        let copies = copies?;
        let ids: Vec<String> = copies.iter().map(|c| c.id.clone()).collect();
        made.sandboxes.extend(ids.iter().cloned());
        ensure!(
            ids.len() == FORK_COUNT as usize,
            "fork made {} copies, not {FORK_COUNT}",
            ids.len()
        );
        let rl = &relay;
        let answers = server
            .block_on(join_all(ids.iter().map(|id| async move {
                (id, first_ok(rl, &rl.host(id), t0).await)
            })));
        let mut all = Duration::ZERO;
        let mut attempts_max = 1;
        for (id, r) in answers {
            let (fb, count, attempts) =
                r.with_context(|| format!("fork copy {id} did not answer"))?;
            continued("fork", id, before, count)?;
            all = all.max(fb);
            attempts_max = attempts_max.max(attempts);
        }
        s.fork_call.push(call);
        s.fork_all.push(all);
        note_retry(&mut s, "fork10-all (slowest copy)", i, attempts_max);
        server.block_on(async {
            for r in join_all(ids.iter().map(|id| client.terminate_sandbox(id))).await {
                r?;
            }
            anyhow::Ok(())
        })?;
        made.sandboxes.retain(|x| !ids.contains(x));
        // The source keeps its own count.
        continued("fork source", &a, before, count_now(server, &relay, &a)?)?;
    }
    eprintln!("fork: done");

    // 4. snapshot-memory, then restore until the first byte.
    for i in 0..args.runs {
        shutdown.check()?;
        let before = count_now(server, &relay, &a)?;
        let t = Instant::now();
        let snap = server.block_on(client.snapshot_memory(
            &a,
            &SnapshotMemoryRequest {
                ttl_secs: Some(SNAPSHOT_TTL_SECS),
            },
        ))?;
        s.snapshot.push(t.elapsed());
        made.snapshots.push(snap.id.clone());
        s.snapshot_bytes = Some(snap.bytes);
        let t0 = Instant::now();
        let sb = server.block_on(client.create_sandbox(&CreateSandboxRequest {
            from_memory_snapshot: Some(snap.id.clone()),
            ..Default::default()
        }));
        let call = t0.elapsed();
        let sb = sb?;
        made.sandboxes.push(sb.id.clone());
        ensure!(
            sb.state == SandboxState::Running,
            "restored {} is {:?}",
            sb.id,
            sb.state
        );
        let (fb, count, attempts) = server.block_on(first_ok(&relay, &relay.host(&sb.id), t0))?;
        continued("restore", &sb.id, before, count)?;
        s.restore_call.push(call);
        s.restore_fb.push(fb);
        note_retry(&mut s, "restore-fb", i, attempts);
        server.block_on(client.terminate_sandbox(&sb.id))?;
        made.sandboxes.retain(|x| *x != sb.id);
        server.block_on(client.delete_memory_snapshot(&snap.id))?;
        made.snapshots.retain(|x| *x != snap.id);
        // The source kept running through the snapshot.
        continued(
            "snapshot source",
            &a,
            before,
            count_now(server, &relay, &a)?,
        )?;
    }
    eprintln!("snapshot/restore: done");

    server.block_on(client.terminate_sandbox(&a))?;
    made.sandboxes.retain(|x| *x != a);
    Ok(s)
}

/// Terminates every sandbox and deletes every memory snapshot the bench
/// made (those an error left behind), through the API.
fn cleanup(server: &ApiServer, made: &Made) -> Result<()> {
    let client = server.client();
    server.block_on(async {
        let mut first_err = None;
        for id in &made.sandboxes {
            if let Err(e) = client.terminate_sandbox(id).await {
                first_err.get_or_insert(anyhow::anyhow!("terminate {id}: {e}"));
            }
        }
        for id in &made.snapshots {
            if let Err(e) = client.delete_memory_snapshot(id).await {
                first_err.get_or_insert(anyhow::anyhow!("delete memory snapshot {id}: {e}"));
            }
        }
        match client.list_memory_snapshots().await {
            Ok(left) if !left.is_empty() => {
                first_err.get_or_insert(anyhow::anyhow!(
                    "{} memory snapshot(s) left, e.g. {}",
                    left.len(),
                    left[0].id
                ));
            }
            Ok(_) => {}
            Err(e) => {
                first_err.get_or_insert(anyhow::anyhow!("list memory snapshots: {e}"));
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    })
}
