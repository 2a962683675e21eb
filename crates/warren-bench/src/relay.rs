//! `warren-bench relay`: the relay against direct loopback and peers.
//!
//! - Bulk TCP throughput: one connection sends `--mib` MiB to a sink that
//!   answers with the byte count; direct, through the relay's raw port
//!   (in-process link: splice; TLS + HTTP/2 link: a node process), and
//!   through `socat` (fork per connection).
//! - Latency of a small HTTP request on a kept-alive connection: direct
//!   HTTP/1.1, through the relay's HTTPS front (both links), and through
//!   nginx terminating TLS with the same certificate. "Added" = p50 minus
//!   direct p50.
//! - Memory per idle tunnel connection: `--idle` raw connections held open
//!   through the relay; RSS growth of the relay process (and of the node
//!   process for the link) divided by the count. Kernel socket memory is
//!   not in RSS and not counted.
//!
//! The relay and the node run as child processes (`relay-child`) so their
//! RSS is theirs alone; the bench's servers and clients run here.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::relay_child::SANDBOX;
use crate::shutdown::Shutdown;
use crate::stats::{json_num, Summary};

#[derive(Args, Debug)]
pub struct RelayArgs {
    /// MiB per bulk throughput run.
    #[arg(long, default_value_t = 2048)]
    pub mib: u64,
    /// Throughput runs per path (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Timed requests per latency series (after 300 warm-up requests).
    #[arg(long, default_value_t = 5000)]
    pub requests: usize,
    /// Idle connections for the memory measurement (0 skips it).
    #[arg(long, default_value_t = 10_000)]
    pub idle: usize,
    /// Skip socat and nginx.
    #[arg(long)]
    pub no_peers: bool,
}

/// Bounds on every wait of the bench.
const IO_TIMEOUT: Duration = Duration::from_secs(120);
const BUF: usize = 256 * 1024;

struct ChildProc {
    child: Child,
    stdin: Option<ChildStdin>,
    ready: Value,
}

impl ChildProc {
    fn spawn(args: &[String]) -> Result<ChildProc> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .arg("relay-child")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawn relay-child")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("child stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .context("relay-child did not start")?;
        let ready = line
            .strip_prefix("READY ")
            .with_context(|| format!("relay-child said {line:?}"))?;
        Ok(ChildProc {
            child,
            stdin,
            ready: serde_json::from_str(ready.trim())?,
        })
    }

    fn rss_kib(&self) -> Result<u64> {
        rss_kib(self.child.id())
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rss_kib(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS")
}

/// A path under test: where the raw port and the HTTPS front are.
struct Path_ {
    name: &'static str,
    raw: Option<SocketAddr>,
    https: Option<SocketAddr>,
    procs: Vec<ChildProc>,
}

pub fn run(args: &RelayArgs, data: &Path, shutdown: &Shutdown) -> Result<()> {
    // The relay holds two sockets per in-process tunnel connection; the
    // echo server runs in a child of its own, so this process holds one.
    let nofile = raise_nofile(2 * args.idle as u64 + 1_000)?;
    let idle = args.idle.min((nofile.saturating_sub(1_500) / 2) as usize);
    if idle < args.idle {
        eprintln!(
            "note: RLIMIT_NOFILE {nofile} allows {idle} idle connections, not {}",
            args.idle
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let sink = rt.block_on(sink_server())?;
    let echo_child = ChildProc::spawn(&[
        "--role".into(),
        "echo".into(),
        "--tls-dir".into(),
        "-".into(),
    ])?;
    let echo: SocketAddr = echo_child.ready["addr"]
        .as_str()
        .context("echo addr")?
        .parse()?;
    let http = rt.block_on(http_server())?;
    let tls_dir = data.join("relay-tls");
    let ca = {
        // The CA (and leaf) exist before the children start; nginx uses them too.
        let m = warren_relay::ensure_ca(&tls_dir, warren_relay::DEFAULT_BASE_DOMAIN)?;
        m.ca_pem
    };

    let mut results = Vec::new();
    let mut json_out = serde_json::Map::new();

    // Direct.
    let direct = Path_ {
        name: "direct",
        raw: Some(sink),
        https: None,
        procs: vec![],
    };
    let mut paths = vec![direct];
    for link in [false, true] {
        shutdown.check()?;
        paths.push(start_relay(link, &tls_dir, http.port(), sink.port())?);
    }
    let socat = if args.no_peers {
        None
    } else {
        start_socat(sink).ok()
    };
    if let Some((_, addr)) = &socat {
        paths.push(Path_ {
            name: "socat",
            raw: Some(*addr),
            https: None,
            procs: vec![],
        });
    }

    // Throughput.
    println!(
        "bulk TCP throughput, {} MiB per run, median of {}:",
        args.mib, args.rounds
    );
    let bytes = args.mib * 1024 * 1024;
    let mut direct_mbps = None;
    for p in &paths {
        let Some(addr) = p.raw else { continue };
        let mut runs = Vec::new();
        for _ in 0..args.rounds {
            shutdown.check()?;
            let d = bulk(addr, bytes)?;
            runs.push(bytes as f64 / d.as_secs_f64() / 1e6);
        }
        runs.sort_by(f64::total_cmp);
        let mbps = runs[runs.len() / 2];
        if p.name == "direct" {
            direct_mbps = Some(mbps);
        }
        let ratio = direct_mbps.map(|d| mbps / d);
        println!(
            "  {:<14} {:>9.0} MB/s  {:>5.2}x direct",
            p.name,
            mbps,
            ratio.unwrap_or(1.0)
        );
        json_out.insert(
            format!("throughput_mbps_{}", key(p.name)),
            json_num(Some(mbps)),
        );
        json_out.insert(format!("throughput_ratio_{}", key(p.name)), json_num(ratio));
        results.push((p.name, mbps));
    }

    // Latency.
    println!(
        "small HTTP request on a kept-alive connection ({} requests):",
        args.requests
    );
    let host = format!(
        "{SANDBOX}-{}.{}",
        http.port(),
        warren_relay::DEFAULT_BASE_DOMAIN
    );
    let lat = |target: Target| -> Result<Summary> {
        let crt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        crt.block_on(latency(target, &ca, args.requests, &host))
    };
    let d = lat(Target::Plain(http))?;
    print_lat("direct", &d, None);
    json_out.insert(
        "latency_p50_us_direct".into(),
        json_num(Some(d.p50 * 1000.0)),
    );
    json_out.insert(
        "latency_p99_us_direct".into(),
        json_num(Some(d.p99 * 1000.0)),
    );
    for p in &paths {
        let Some(https) = p.https else { continue };
        shutdown.check()?;
        let s = lat(Target::Tls(https))?;
        print_lat(p.name, &s, Some(&d));
        json_out.insert(
            format!("latency_p50_us_{}", key(p.name)),
            json_num(Some(s.p50 * 1000.0)),
        );
        json_out.insert(
            format!("latency_p99_us_{}", key(p.name)),
            json_num(Some(s.p99 * 1000.0)),
        );
        json_out.insert(
            format!("latency_added_p50_us_{}", key(p.name)),
            json_num(Some((s.p50 - d.p50) * 1000.0)),
        );
    }
    if !args.no_peers {
        match start_nginx(data, &tls_dir, http) {
            Ok(ng) => {
                let s = lat(Target::Tls(ng.addr))?;
                print_lat("nginx", &s, Some(&d));
                json_out.insert(
                    "latency_p50_us_nginx".into(),
                    json_num(Some(s.p50 * 1000.0)),
                );
                json_out.insert(
                    "latency_added_p50_us_nginx".into(),
                    json_num(Some((s.p50 - d.p50) * 1000.0)),
                );
            }
            Err(e) => println!("  nginx          skipped: {e:#}"),
        }
    }

    // Idle memory.
    if idle > 0 {
        println!("memory per idle raw tunnel connection ({idle} connections):");
        for link in [false, true] {
            shutdown.check()?;
            let p = start_relay(link, &tls_dir, http.port(), echo.port())?;
            let per = rt.block_on(idle_memory(&p, idle))?;
            println!(
                "  {:<14} relay {:>6.1} KiB/conn{}",
                p.name,
                per.0,
                per.1
                    .map(|n| format!(", node {n:.1} KiB/conn"))
                    .unwrap_or_default()
            );
            json_out.insert(
                format!("idle_kib_per_conn_relay_{}", key(p.name)),
                json_num(Some(per.0)),
            );
            if let Some(n) = per.1 {
                json_out.insert(
                    format!("idle_kib_per_conn_node_{}", key(p.name)),
                    json_num(Some(n)),
                );
            }
        }
    }
    drop(socat);
    drop(paths);
    json_out.insert("idle_connections".into(), json!(idle));
    drop(echo_child);
    json_out.insert("bench".into(), json!("relay"));
    println!("{}", Value::Object(json_out));
    Ok(())
}

fn key(name: &str) -> String {
    name.replace(['-', '+'], "_")
}

fn print_lat(name: &str, s: &Summary, direct: Option<&Summary>) {
    let added = direct
        .map(|d| format!("  added p50 {:>6.1} us", (s.p50 - d.p50) * 1000.0))
        .unwrap_or_default();
    println!(
        "  {:<14} p50 {:>7.1} us  p99 {:>7.1} us  mean {:>7.1} us{added}",
        name,
        s.p50 * 1000.0,
        s.p99 * 1000.0,
        s.mean * 1000.0
    );
}

/// Raises the soft descriptor limit as far as `want` or the hard limit
/// (children inherit it); returns the limit now in force.
fn raise_nofile(want: u64) -> Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= want {
        return Ok(soft);
    }
    if setrlimit(Resource::RLIMIT_NOFILE, want, want.max(hard)).is_ok() {
        return Ok(want);
    }
    // Without CAP_SYS_RESOURCE the hard limit is the ceiling.
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(hard)
}

fn start_relay(link: bool, tls_dir: &Path, http_port: u16, raw_target: u16) -> Result<Path_> {
    let raw_port = free_port()?;
    let mut a = vec![
        "--role".to_string(),
        "relay".into(),
        "--tls-dir".into(),
        tls_dir.display().to_string(),
        "--http-port".into(),
        http_port.to_string(),
        "--raw-port".into(),
        raw_port.to_string(),
        "--raw-target".into(),
        raw_target.to_string(),
    ];
    if link {
        a.push("--link".into());
    }
    let relay = ChildProc::spawn(&a)?;
    let https: SocketAddr = relay.ready["https"]
        .as_str()
        .context("https addr")?
        .parse()?;
    ensure!(
        relay.ready["raw_ports"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p == raw_port)),
        "relay did not open raw port {raw_port}: {}",
        relay.ready
    );
    let mut procs = vec![relay];
    if link {
        let link_addr = procs[0].ready["link"]
            .as_str()
            .context("link addr")?
            .to_string();
        let node = ChildProc::spawn(&[
            "--role".into(),
            "node".into(),
            "--tls-dir".into(),
            tls_dir.display().to_string(),
            "--relay-link".into(),
            link_addr,
        ])?;
        procs.push(node);
        // The relay registers the node right after the node sees the welcome.
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(Path_ {
        name: if link { "relay-h2link" } else { "relay-inproc" },
        raw: Some(SocketAddr::from(([127, 0, 0, 1], raw_port))),
        https: Some(https),
        procs,
    })
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A peer process killed when dropped (also on an error path).
struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_socat(sink: SocketAddr) -> Result<(Peer, SocketAddr)> {
    let port = free_port()?;
    let child = Peer(
        Command::new("socat")
            .arg(format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork"))
            .arg(format!("TCP:{sink}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("socat not installed (scripts/install-deps.sh installs it)")?,
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        ensure!(Instant::now() < deadline, "socat did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((child, addr))
}

struct Nginx {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: fast shutdown of master and workers.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_nginx(data: &Path, tls_dir: &Path, upstream: SocketAddr) -> Result<Nginx> {
    let port = free_port()?;
    let dir = data.join("nginx");
    std::fs::create_dir_all(dir.join("logs"))?;
    let conf = format!(
        "worker_processes 2;\nerror_log {d}/logs/error.log;\npid {d}/nginx.pid;\nevents {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
         upstream up {{ server {upstream}; keepalive 32; keepalive_requests 1000000; }}\n\
         keepalive_requests 1000000; keepalive_timeout 300s;\n\
         server {{\n    listen 127.0.0.1:{port} ssl http2;\n    ssl_certificate {t}/relay.pem;\n    ssl_certificate_key {t}/relay-key.pem;\n\
         location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header Host $host; }}\n  }}\n}}\n",
        d = dir.display(),
        t = tls_dir.display(),
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let child = Command::new("nginx")
        .arg("-c")
        .arg(&conf_path)
        .arg("-p")
        .arg(&dir)
        .arg("-g")
        .arg("daemon off;")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("nginx not installed (scripts/install-deps.sh installs it)")?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut ng = Nginx { child, addr };
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        if let Ok(Some(st)) = ng.child.try_wait() {
            bail!("nginx exited: {st}");
        }
        ensure!(Instant::now() < deadline, "nginx did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(ng)
}

/// Sends `bytes` to the sink behind `addr`; the sink answers with its count.
fn bulk(addr: SocketAddr, bytes: u64) -> Result<Duration> {
    let buf = vec![0xA5u8; BUF];
    let start = Instant::now();
    let mut s = TcpStream::connect(addr)?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(BUF as u64) as usize;
        s.write_all(&buf[..n])?;
        left -= n as u64;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    let mut count = [0u8; 8];
    s.read_exact(&mut count).context("sink's byte count")?;
    let got = u64::from_be_bytes(count);
    ensure!(got == bytes, "sink got {got} of {bytes} bytes");
    Ok(start.elapsed())
}

async fn sink_server() -> Result<SocketAddr> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; BUF];
                let mut total = 0u64;
                loop {
                    match tokio::time::timeout(IO_TIMEOUT, s.read(&mut buf)).await {
                        Ok(Ok(0)) => break,
                        Ok(Ok(n)) => total += n as u64,
                        _ => return,
                    }
                }
                let _ = s.write_all(&total.to_be_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    Ok(addr)
}

/// Echoes every byte (the far end of idle tunnel connections).
pub async fn echo_server() -> Result<SocketAddr> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    Ok(addr)
}

async fn http_server() -> Result<SocketAddr> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                        Bytes::from_static(b"ok\n"),
                    )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

enum Target {
    Plain(SocketAddr),
    Tls(SocketAddr),
}

/// `host` names the sandbox port for the relay (`<id>-<port>.<domain>`).
async fn latency(target: Target, ca: &str, n: usize, host: &str) -> Result<Summary> {
    let mut sender = match target {
        Target::Plain(addr) => {
            let s = tokio::net::TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await?;
            tokio::spawn(conn);
            sender
        }
        Target::Tls(addr) => {
            let s = tokio::net::TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            let cfg = warren_relay::tls::client_config(ca.as_bytes(), vec![b"http/1.1".to_vec()])?;
            let name = rustls::pki_types::ServerName::try_from(format!(
                "x.{}",
                warren_relay::DEFAULT_BASE_DOMAIN
            ))?;
            let tls = tokio_rustls::TlsConnector::from(cfg)
                .connect(name, s)
                .await?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
            tokio::spawn(conn);
            sender
        }
    };
    let mut samples = Vec::with_capacity(n);
    for i in 0..(n + 300) {
        let req = hyper::Request::get("/")
            .header("host", host)
            .body(Empty::<Bytes>::new())?;
        let start = Instant::now();
        let resp = tokio::time::timeout(IO_TIMEOUT, sender.send_request(req)).await??;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        let took = start.elapsed();
        ensure!(
            status == 200 && &body[..] == b"ok\n",
            "bad answer {status} {body:?}"
        );
        if i >= 300 {
            samples.push(took);
        }
    }
    Summary::of(&samples).context("no samples")
}

/// Opens `n` raw connections through the relay, each proven end to end by
/// a one-byte echo, and returns KiB of RSS growth per connection (relay,
/// node).
async fn idle_memory(p: &Path_, n: usize) -> Result<(f64, Option<f64>)> {
    let addr = p.raw.context("raw port")?;
    // Warm up allocator and pools with a few connections first.
    let mut warm = Vec::new();
    for _ in 0..50 {
        warm.push(open_idle(addr).await?);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let relay0 = p.procs[0].rss_kib()?;
    let node0 = p.procs.get(1).map(|c| c.rss_kib()).transpose()?;
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let sem = sem.clone();
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await?;
            open_idle(addr).await
        });
    }
    let mut conns = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        conns.push(r??);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let relay1 = p.procs[0].rss_kib()?;
    let node1 = p.procs.get(1).map(|c| c.rss_kib()).transpose()?;
    drop(conns);
    drop(warm);
    let per = |a: u64, b: u64| (b as f64 - a as f64) / n as f64;
    Ok((
        per(relay0, relay1),
        node0.zip(node1).map(|(a, b)| per(a, b)),
    ))
}

async fn open_idle(addr: SocketAddr) -> Result<tokio::net::TcpStream> {
    let mut s = tokio::time::timeout(IO_TIMEOUT, tokio::net::TcpStream::connect(addr)).await??;
    s.write_all(b"x").await?;
    let mut b = [0u8; 1];
    tokio::time::timeout(IO_TIMEOUT, s.read_exact(&mut b)).await??;
    Ok(s)
}
