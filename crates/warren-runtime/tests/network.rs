//! Sandbox networking, every rule both ways, in a NetLab.
//!
//! Each test first moves its own thread into a fresh network namespace
//! (`NetLab::enter`), which becomes the node's namespace: the runtime's
//! nftables table, `ip_forward`, veths and DNS forwarder all live there, and
//! the "internet", "metadata" and "private" hosts live in a namespace the lab
//! creates. Nothing in the host's namespace changes; nothing leaves the
//! machine (the lab's default route leads to the lab's router).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use libtest_mimic::{Arguments, Failed, Trial};
use warren_runtime::{
    EgressPolicy, ExecExit, ExecIo, ExecSpec, ExitStatus, MainIo, NativeConfig, NativeRuntime,
    NetworkSpec, RootfsSpec, Runtime, SandboxId, SandboxSpec,
};
use warren_testkit::netlab::{self, NetLab};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// One test's node: its lab, data dir and runtime.
struct Node {
    rt: Option<NativeRuntime>,
    rootfs: RootfsSpec,
    env: Vec<String>,
    data: tempfile::TempDir,
    cgroup_parent: String,
    lab: NetLab,
}

/// This binary's copy of the init binary for checkpointable sandboxes.
fn init_copy_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/run/warren-test-net-{}", std::process::id()))
}

fn config(
    data: &std::path::Path,
    cgroup_parent: &str,
    edit: impl FnOnce(&mut NativeConfig),
) -> NativeConfig {
    let mut cfg = NativeConfig::new(data.join("runtime"));
    cfg.cgroup_parent = cgroup_parent.to_string();
    let mut net = cfg.default_network();
    net.dns_upstreams = vec![netlab::DNS_UPSTREAM];
    cfg.network = Some(net);
    cfg.netns_pool = 2;
    cfg.init_copy_dir = init_copy_dir();
    edit(&mut cfg);
    cfg
}

impl Node {
    fn new(edit: impl FnOnce(&mut NativeConfig)) -> Result<Node> {
        let lab = NetLab::enter().context("building the net lab")?;
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let data = tempfile::Builder::new()
            .prefix("warren-net-test-")
            .tempdir_in("/var/tmp")?;
        let cgroup_parent = format!("warren-test-net-{}-{n}", std::process::id());
        let store = warren_image::ImageStore::open(data.path().join("images"))?;
        let img = store.host_image()?;
        let rt = NativeRuntime::new(config(data.path(), &cgroup_parent, edit))?;
        Ok(Node {
            rt: Some(rt),
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
            cgroup_parent,
            lab,
        })
    }

    fn rt(&self) -> &NativeRuntime {
        self.rt.as_ref().expect("runtime is up")
    }

    fn spec(&self, prefix: &str, network: NetworkSpec) -> Result<SandboxSpec> {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let id = SandboxId::new(format!("{prefix}-{}-{n}", std::process::id()))?;
        let mut spec = SandboxSpec::new(id, self.rootfs.clone());
        spec.env = self.env.clone();
        spec.network = network;
        Ok(spec)
    }

    fn sandbox(&self, prefix: &str, network: NetworkSpec) -> Result<SandboxId> {
        let spec = self.spec(prefix, network)?;
        self.rt().create(&spec, MainIo::default())?;
        Ok(spec.id)
    }

    fn run(&self, id: &SandboxId, script: &str) -> Result<(ExecExit, String, String)> {
        let spec = ExecSpec::new(vec!["sh".into(), "-c".into(), script.into()]);
        let mut e = self.rt().exec(id, &spec, ExecIo::Pipes { stdin: false })?;
        let mut out = e.stdout.take().context("stdout")?;
        let mut err = e.stderr.take().context("stderr")?;
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

    fn ok(&self, id: &SandboxId, script: &str) -> Result<String> {
        let (exit, out, err) = self.run(id, script)?;
        ensure!(
            exit.status == ExitStatus::Code(0),
            "{script:?} ended {exit:?}; stdout {out:?}; stderr {err:?}"
        );
        Ok(out)
    }

    /// Tries every URL from inside the sandbox at once; returns which
    /// answered (`wget` with a 2 s timeout each).
    fn reach(&self, id: &SandboxId, urls: &[String]) -> Result<Vec<(String, bool)>> {
        let mut script = String::new();
        for u in urls {
            script.push_str(&format!(
                "(if curl -sf --noproxy '*' -m 2 -o /dev/null '{u}'; then echo 'OK {u}'; else echo 'NO {u}'; fi) &\n"
            ));
        }
        script.push_str("wait\n");
        let out = self.ok(id, &script)?;
        urls.iter()
            .map(|u| {
                if out.contains(&format!("OK {u}")) {
                    Ok((u.clone(), true))
                } else if out.contains(&format!("NO {u}")) {
                    Ok((u.clone(), false))
                } else {
                    Err(anyhow!("no verdict for {u}: {out}"))
                }
            })
            .collect()
    }

    /// Requires exactly `allowed` of `urls` to be reachable.
    fn expect_reach(&self, id: &SandboxId, allowed: &[String], denied: &[String]) -> Result<()> {
        let all: Vec<String> = allowed.iter().chain(denied).cloned().collect();
        let got = self.reach(id, &all)?;
        for (u, ok) in got {
            let want = allowed.contains(&u);
            ensure!(ok == want, "{u}: reachable={ok}, expected {want}");
        }
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            for id in rt.list() {
                let _ = rt.destroy(&id);
            }
            rt.flush_trash();
        }
        if let Ok(m) = warren_cgroup::CgroupManager::detect("/sys/fs/cgroup", &self.cgroup_parent) {
            let _ = m.destroy_parent();
        }
        let _ = &self.lab;
        let _ = &self.data;
    }
}

fn url(ip: impl std::fmt::Display, port: u16) -> String {
    format!("http://{ip}:{port}/")
}

/// A tiny HTTP responder on the node (the test thread's namespace) bound to
/// `0.0.0.0:0`: stands for the Warren API and anything else on the node.
fn node_server() -> Result<u16> {
    let l = TcpListener::bind("0.0.0.0:0")?;
    let port = l.local_addr()?.port();
    l.set_nonblocking(true)?;
    std::thread::spawn(move || {
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(120) {
            match l.accept() {
                Ok((mut c, _)) => {
                    let _ = c.set_nonblocking(false);
                    let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut b = [0u8; 1024];
                    let _ = c.read(&mut b);
                    let _ = c.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nnode\n");
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    Ok(port)
}

/// The node itself reaches `ip:port` (positive control: the host exists).
fn node_reaches(ip: Ipv4Addr, port: u16) -> bool {
    TcpStream::connect_timeout(&SocketAddr::from((ip, port)), Duration::from_secs(2)).is_ok()
}

fn wiring_and_block_network() -> Result<()> {
    let node = Node::new(|_| {})?;
    let id = node.sandbox("net-wire", NetworkSpec::enabled())?;
    let a = node
        .rt()
        .address(&id)?
        .context("networked sandbox has an address")?;
    ensure!(a.prefix == 30, "{a:?}");
    let addrs = node.ok(&id, "ip -4 -o addr show dev eth0; ip route")?;
    ensure!(addrs.contains(&format!("inet {}/30", a.address)), "{addrs}");
    ensure!(
        addrs.contains(&format!("default via {} dev eth0", a.gateway)),
        "{addrs}"
    );
    let resolv = node.ok(&id, "cat /etc/resolv.conf")?;
    ensure!(
        resolv.contains(&format!("nameserver {}", a.gateway)),
        "{resolv}"
    );
    // Root inside the sandbox cannot change its network: the namespace
    // belongs to the host's user namespace. (Each change would only touch
    // the sandbox's own namespace if it got through.)
    let tries = node.ok(
        &id,
        "ip route add 192.0.2.0/24 dev eth0 2>/dev/null && echo CHANGED route; \
         ip addr add 10.88.255.1/32 dev eth0 2>/dev/null && echo CHANGED addr; \
         ip link set eth0 mtu 1400 2>/dev/null && echo CHANGED link; \
         ip link add dummy0 type dummy 2>/dev/null && echo CHANGED dummy; \
         v=$(cat /proc/sys/net/ipv4/ip_forward); \
         (echo $v > /proc/sys/net/ipv4/ip_forward) 2>/dev/null && echo CHANGED sysctl; \
         echo done",
    )?;
    ensure!(
        tries.contains("done") && !tries.contains("CHANGED"),
        "the sandbox changed its network: {tries}"
    );
    // The node side: the veth exists with the gateway address.
    let mut nl = warren_net::Netlink::open()?;
    ensure!(nl
        .index_of(&format!("wr{}", warren_net::base36(a.index)))?
        .is_some());

    let bare = node.sandbox("net-bare", NetworkSpec::default())?;
    ensure!(node.rt().address(&bare)?.is_none());
    let links = node.ok(&bare, "ls /sys/class/net")?;
    ensure!(
        links.split_whitespace().collect::<Vec<_>>() == ["lo"],
        "{links}"
    );
    node.expect_reach(&bare, &[], &[url(netlab::INTERNET, 80)])?;
    ensure!(node.rt().set_egress(&bare, EgressPolicy::Blocked).is_err());
    Ok(())
}

fn default_policy_both_ways() -> Result<()> {
    let node = Node::new(|_| {})?;
    let port = node_server()?;
    // Positive controls from the node itself: every host exists.
    for ip in [
        netlab::INTERNET,
        netlab::INTERNET2,
        netlab::METADATA,
        netlab::PRIVATE,
        netlab::PRIVATE2,
    ] {
        ensure!(node_reaches(ip, 80), "the node cannot reach {ip}");
    }
    ensure!(node_reaches(Ipv4Addr::LOCALHOST, port));
    ensure!(node_reaches(netlab::NODE_UPLINK, port));

    let id = node.sandbox("net-def", NetworkSpec::enabled())?;
    let a = node.rt().address(&id)?.context("address")?;
    let allowed = [url(netlab::INTERNET, 80), url(netlab::INTERNET2, 80)];
    let denied = [
        url(netlab::METADATA, 80),
        url(netlab::PRIVATE, 80),
        url(netlab::PRIVATE2, 80),
        url(Ipv4Addr::LOCALHOST, port), // the sandbox's own loopback: nothing there
        url(netlab::NODE_UPLINK, port), // the node's address (its API, say)
        url(a.gateway, port),           // the node via the gateway
    ];
    node.expect_reach(&id, &allowed, &denied)?;
    // The body proves which host answered.
    let body = node.ok(
        &id,
        &format!("curl -sf --noproxy '*' -m 2 {}", url(netlab::INTERNET, 80)),
    )?;
    ensure!(body.contains("hello from 203.0.113.10"), "{body}");
    Ok(())
}

fn other_sandboxes_are_unreachable() -> Result<()> {
    let node = Node::new(|_| {})?;
    let mut spec = node.spec("net-srv", NetworkSpec::enabled())?;
    spec.command = Some(
        ["python3", "-m", "http.server", "8080", "--bind", "0.0.0.0"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
    );
    node.rt().create(&spec, MainIo::default())?;
    let srv = spec.id.clone();
    let srv_addr = node.rt().address(&srv)?.context("address")?.address;
    let netns = node.rt().netns(&srv)?;
    // Positive control: the server answers inside its own namespace, on
    // loopback and on its address (connect_in_netns, as the relay does).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let up = warren_testkit::wait_until(Duration::from_secs(20), || {
        rt.block_on(warren_net::connect_in_netns(
            netns.as_fd(),
            SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)),
        ))
        .is_ok()
    });
    ensure!(up, "the server in the sandbox never listened");
    rt.block_on(warren_net::connect_in_netns(
        netns.as_fd(),
        SocketAddr::from((srv_addr, 8080)),
    ))
    .context("connect_in_netns to the sandbox's own address")?;
    // Another sandbox cannot reach it; neither can the node (no inbound).
    let client = node.sandbox("net-cli", NetworkSpec::enabled())?;
    node.expect_reach(
        &client,
        &[url(netlab::INTERNET, 80)],
        &[url(srv_addr, 8080)],
    )?;
    ensure!(
        !node_reaches(srv_addr, 8080),
        "the node opened a connection into a sandbox"
    );
    Ok(())
}

fn allowlist_allows_only_listed() -> Result<()> {
    let node = Node::new(|_| {})?;
    let only = EgressPolicy::Allowlist(vec![
        "203.0.113.10/32".parse()?,
        // Listed, but private: still denied (an allowlist only narrows).
        "10.0.0.0/8".parse()?,
    ]);
    let id = node.sandbox(
        "net-allow",
        NetworkSpec {
            enabled: true,
            egress: only.clone(),
        },
    )?;
    ensure!(node.rt().egress(&id)? == Some(only));
    node.expect_reach(
        &id,
        &[url(netlab::INTERNET, 80)],
        &[
            url(netlab::INTERNET2, 80),
            url(netlab::PRIVATE, 80),
            url(netlab::METADATA, 80),
        ],
    )?;
    // DNS through the gateway keeps working in allowlist mode.
    let out = node.ok(&id, "busybox nslookup internet.test")?;
    ensure!(out.contains("203.0.113.10"), "{out}");
    Ok(())
}

fn policy_changes_on_a_running_sandbox() -> Result<()> {
    let node = Node::new(|_| {})?;
    let id = node.sandbox("net-chg", NetworkSpec::enabled())?;
    let i1 = url(netlab::INTERNET, 80);
    let i2 = url(netlab::INTERNET2, 80);
    node.expect_reach(&id, &[i1.clone(), i2.clone()], &[])?;
    let t = std::time::Instant::now();
    node.rt().set_egress(&id, EgressPolicy::Blocked)?;
    println!("set_egress (nft -f -): {} us", t.elapsed().as_micros());
    node.expect_reach(&id, &[], &[i1.clone(), i2.clone()])?;
    let (exit, _, _) = node.run(&id, "busybox nslookup internet.test")?;
    ensure!(
        exit.status != ExitStatus::Code(0),
        "DNS worked while blocked"
    );
    node.rt().set_egress(
        &id,
        EgressPolicy::Allowlist(vec!["198.51.100.0/24".parse()?]),
    )?;
    node.expect_reach(&id, std::slice::from_ref(&i2), std::slice::from_ref(&i1))?;
    node.rt().set_egress(&id, EgressPolicy::Default)?;
    node.expect_reach(&id, &[i1, i2], &[url(netlab::METADATA, 80)])?;
    Ok(())
}

fn established_connection_is_cut_by_block() -> Result<()> {
    let node = Node::new(|_| {})?;
    let id = node.sandbox("net-cut", NetworkSpec::enabled())?;
    // A connection to the echo port, kept open; the script echoes one line,
    // waits for the test to block the sandbox, then tries again.
    let script = format!(
        "import socket,sys,time\n\
         s=socket.create_connection(('{}',{}),timeout=3)\n\
         s.sendall(b'one\\n'); print(s.recv(10)); sys.stdout.flush()\n\
         open('/tmp/ready','w').close()\n\
         for _ in range(100):\n\
         \x20   time.sleep(0.05)\n\
         \x20   try: open('/tmp/go'); break\n\
         \x20   except OSError: pass\n\
         try:\n\
         \x20   s.sendall(b'two\\n'); print(s.recv(10))\n\
         except Exception as e: print('cut', type(e).__name__)\n",
        netlab::INTERNET,
        netlab::ECHO_PORT
    );
    let spec = ExecSpec::new(vec!["python3".into(), "-c".into(), script]);
    let mut e = node.rt().exec(&id, &spec, ExecIo::Pipes { stdin: false })?;
    let ready = warren_testkit::wait_until(Duration::from_secs(10), || {
        node.run(&id, "test -e /tmp/ready")
            .map(|r| r.0.status == ExitStatus::Code(0))
            .unwrap_or(false)
    });
    ensure!(ready, "the connection never came up");
    node.rt().set_egress(&id, EgressPolicy::Blocked)?;
    node.ok(&id, "touch /tmp/go")?;
    let mut out = String::new();
    e.stdout
        .take()
        .context("stdout")?
        .read_to_string(&mut out)?;
    e.wait()?;
    ensure!(out.contains("b'one\\n'") && out.contains("cut"), "{out}");
    Ok(())
}

fn dns_resolves_through_the_forwarder() -> Result<()> {
    let node = Node::new(|_| {})?;
    let id = node.sandbox("net-dns", NetworkSpec::enabled())?;
    let out = node.ok(&id, "busybox nslookup internet.test")?;
    ensure!(out.contains("203.0.113.10"), "{out}");
    let (exit, out, _) = node.run(&id, "busybox nslookup nope.test")?;
    ensure!(
        exit.status != ExitStatus::Code(0) || !out.contains("Address: 2"),
        "{out}"
    );
    // TCP through the forwarder (from the node's loopback, which may use it).
    let port = node.rt().network().context("network")?.dns_port();
    let mut c = TcpStream::connect_timeout(
        &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        Duration::from_secs(2),
    )?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    let q = netlab::dns_query(0x4242, "internet.test");
    c.write_all(&(q.len() as u16).to_be_bytes())?;
    c.write_all(&q)?;
    let mut len = [0u8; 2];
    c.read_exact(&mut len)?;
    let mut a = vec![0u8; u16::from_be_bytes(len) as usize];
    c.read_exact(&mut a)?;
    ensure!(netlab::dns_first_a(&a) == Some(netlab::INTERNET), "{a:?}");
    // The forwarder is not open to the node's other interfaces: the router
    // (the outside world) cannot use it.
    let from_outside = warren_net::in_netns(node.lab.router_ns.as_fd(), move || {
        TcpStream::connect_timeout(
            &SocketAddr::from((netlab::NODE_UPLINK, port)),
            Duration::from_secs(1),
        )
        .is_ok()
    })?;
    ensure!(!from_outside, "the DNS forwarder answers the outside world");
    Ok(())
}

fn addresses_are_reused_after_release() -> Result<()> {
    let node = Node::new(|c| {
        c.netns_pool = 0;
        if let Some(n) = &mut c.network {
            n.ipv4_cidr = "10.99.0.0/28".parse().expect("cidr");
        }
    })?;
    let a = node.sandbox("net-reuse", NetworkSpec::enabled())?;
    let b = node.sandbox("net-reuse", NetworkSpec::enabled())?;
    let ia = node.rt().address(&a)?.context("a")?;
    let ib = node.rt().address(&b)?.context("b")?;
    ensure!((ia.index, ib.index) == (0, 1), "{ia:?} {ib:?}");
    node.rt().destroy(&a)?;
    // Destroy hands the veth and the lease to the reaper thread.
    node.rt().flush_trash();
    let mut nl = warren_net::Netlink::open()?;
    ensure!(
        nl.index_of("wr0")?.is_none(),
        "veth of a destroyed sandbox left"
    );
    let c = node.sandbox("net-reuse", NetworkSpec::enabled())?;
    let d = node.sandbox("net-reuse", NetworkSpec::enabled())?;
    ensure!(node.rt().address(&c)?.context("c")?.index == 2);
    ensure!(node.rt().address(&d)?.context("d")?.index == 3);
    // The freed one comes back last, and works.
    let e = node.sandbox("net-reuse", NetworkSpec::enabled())?;
    let ie = node.rt().address(&e)?.context("e")?;
    ensure!(ie.index == 0 && ie.address == ia.address, "{ie:?}");
    node.expect_reach(&e, &[url(netlab::INTERNET, 80)], &[])?;
    let full = node.spec("net-reuse", NetworkSpec::enabled())?;
    let err = node
        .rt()
        .create(&full, MainIo::default())
        .err()
        .context("pool is exhausted")?;
    ensure!(err.code() == "capacity_exhausted", "{err}");
    Ok(())
}

fn nothing_left_after_shutdown() -> Result<()> {
    let mut node = Node::new(|_| {})?;
    let table = node
        .rt()
        .config()
        .network
        .as_ref()
        .context("net")?
        .table
        .clone();
    let id = node.sandbox("net-down", NetworkSpec::enabled())?;
    ensure!(nft_has_table(&table), "table missing while running");
    ensure!(std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")?.trim() == "1");
    let rt = node.rt.take().context("rt")?;
    rt.destroy(&id)?;
    rt.flush_trash();
    drop(rt);
    ensure!(!nft_has_table(&table), "table left after shutdown");
    let mut nl = warren_net::Netlink::open()?;
    let left: Vec<_> = nl
        .link_names()?
        .into_iter()
        .filter(|(_, n)| n.starts_with("wr"))
        .collect();
    ensure!(left.is_empty(), "links left: {left:?}");
    ensure!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")?.trim() == "0",
        "ip_forward not restored"
    );
    Ok(())
}

fn nft_has_table(table: &str) -> bool {
    std::process::Command::new("nft")
        .args(["list", "table", "inet", table])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn spoofed_source_is_dropped() -> Result<()> {
    let node = Node::new(|_| {})?;
    let id = node.sandbox("net-spoof", NetworkSpec::enabled())?;
    let own = node.rt().address(&id)?.context("address")?.address;
    let netns = node.rt().netns(&id)?;
    // As the node's root (the sandbox cannot), put foreign addresses on the
    // sandbox's eth0: another sandbox's and a public one.
    let fake_sandbox = Ipv4Addr::new(10, 88, 3, 2);
    let fake_public = Ipv4Addr::new(203, 0, 113, 99);
    warren_net::in_netns(netns.as_fd(), || -> Result<()> {
        let mut nl = warren_net::Netlink::open()?;
        let eth = nl.index_of("eth0")?.context("eth0")?;
        nl.add_address(eth, fake_sandbox, 32)?;
        nl.add_address(eth, fake_public, 32)?;
        Ok(())
    })??;
    let probe = |src: Ipv4Addr| {
        format!(
            "python3 -c \"import socket; s=socket.socket(); s.settimeout(2); s.bind(('{src}',0)); s.connect(('{}',80)); print('connected')\"",
            netlab::INTERNET
        )
    };
    let out = node.ok(&id, &probe(own))?;
    ensure!(out.contains("connected"), "control: {out}");
    for src in [fake_sandbox, fake_public] {
        let (exit, out, _) = node.run(&id, &probe(src))?;
        ensure!(
            exit.status != ExitStatus::Code(0),
            "spoofed {src} got through: {out}"
        );
    }
    Ok(())
}

fn recover_readopts_network() -> Result<()> {
    let mut node = Node::new(|_| {})?;
    let id = node.sandbox("net-rec", NetworkSpec::enabled())?;
    node.rt().set_egress(
        &id,
        EgressPolicy::Allowlist(vec!["203.0.113.0/24".parse()?]),
    )?;
    let before = node.rt().address(&id)?.context("address")?;
    let table = node
        .rt()
        .config()
        .network
        .as_ref()
        .context("net")?
        .table
        .clone();
    // The node goes away with the sandbox still running: the table stays.
    let rt = node.rt.take().context("rt")?;
    let cfg = rt.config().clone();
    drop(rt);
    ensure!(nft_has_table(&table), "table removed while a sandbox runs");
    let rt = NativeRuntime::new(cfg)?;
    let rec = rt.recover()?;
    ensure!(
        rec == vec![warren_runtime::Recovered::Running(id.clone())],
        "{rec:?}"
    );
    node.rt = Some(rt);
    ensure!(node.rt().address(&id)? == Some(before));
    ensure!(matches!(
        node.rt().egress(&id)?,
        Some(EgressPolicy::Allowlist(_))
    ));
    // The replaced table carries the re-applied policy.
    node.expect_reach(
        &id,
        &[url(netlab::INTERNET, 80)],
        &[url(netlab::INTERNET2, 80)],
    )?;
    // A new sandbox does not get the adopted address.
    let other = node.sandbox("net-rec", NetworkSpec::enabled())?;
    ensure!(node.rt().address(&other)?.context("other")?.index != before.index);
    Ok(())
}

/// A checkpointable sandbox is wired like any other (its root still cannot
/// change its network: the capabilities are gone from its bounding set),
/// and a copy restored from its checkpoint gets a new address, gateway,
/// `resolv.conf` and egress rules, with its listening server answering at
/// the new address; the source keeps its own.
fn checkpointable_sandboxes_restore_with_a_new_address() -> Result<()> {
    if checkpoint_unavailable("checkpointable_sandboxes_restore_with_a_new_address") {
        return Ok(());
    }
    let node = Node::new(|_| {})?;
    let mut spec = node.spec("net-ck", NetworkSpec::enabled())?;
    spec.checkpointable = true;
    spec.command = Some(vec![
        "python3".into(),
        "-c".into(),
        "import http.server as h\n\
         hits = [0]\n\
         class H(h.BaseHTTPRequestHandler):\n\
         \x20   def do_GET(self):\n\
         \x20       hits[0] += 1\n\
         \x20       b = str(hits[0]).encode()\n\
         \x20       self.send_response(200); self.send_header('Content-Length', str(len(b))); self.end_headers(); self.wfile.write(b)\n\
         \x20   def log_message(self, *a): pass\n\
         h.HTTPServer(('0.0.0.0', 8000), H).serve_forever()\n"
            .into(),
    ]);
    node.rt().create(&spec, MainIo::default())?;
    let id = spec.id.clone();
    let a = node.rt().address(&id)?.context("address")?;
    let get = |id: &SandboxId| node.ok(id, "curl -sf --noproxy '*' -m 2 http://127.0.0.1:8000/");
    ensure!(
        warren_testkit::wait_until(Duration::from_secs(10), || get(&id).is_ok()),
        "the server never answered"
    );
    ensure!(get(&id)?.trim() == "2");
    let tries = node.ok(
        &id,
        "ip addr add 10.88.255.1/32 dev eth0 2>/dev/null && echo CHANGED addr; \
         ip link add dummy0 type dummy 2>/dev/null && echo CHANGED dummy; echo done",
    )?;
    ensure!(!tries.contains("CHANGED"), "{tries}");
    let tmp = tempfile::Builder::new()
        .prefix("warren-net-ckpt-")
        .tempdir_in("/var/tmp")?;
    let dir = tmp.path().join("c");
    node.rt()
        .checkpoint(&id, &dir, warren_runtime::CheckpointOptions::default())?;
    let mut copy = node.spec("net-copy", NetworkSpec::enabled())?;
    copy.checkpointable = true;
    node.rt().restore(&copy, &dir)?;
    let b = node.rt().address(&copy.id)?.context("copy address")?;
    ensure!(b.address != a.address, "{a:?} {b:?}");
    let addrs = node.ok(
        &copy.id,
        "ip -4 -o addr show dev eth0; ip route; cat /etc/resolv.conf",
    )?;
    ensure!(addrs.contains(&format!("inet {}/30", b.address)), "{addrs}");
    ensure!(
        addrs.contains(&format!("default via {} dev eth0", b.gateway)),
        "{addrs}"
    );
    ensure!(
        addrs.contains(&format!("nameserver {}", b.gateway)),
        "{addrs}"
    );
    // The in-memory counter continues in the copy, and separately in the source.
    ensure!(get(&copy.id)?.trim() == "3", "the copy lost its state");
    ensure!(get(&id)?.trim() == "3");
    ensure!(get(&copy.id)?.trim() == "4");
    // Listening on 0.0.0.0 covers the new address.
    let own = node.ok(
        &copy.id,
        &format!("curl -sf --noproxy '*' -m 2 http://{}:8000/", b.address),
    )?;
    ensure!(own.trim() == "5", "{own}");
    node.rt().destroy(&copy.id)?;
    node.rt().destroy(&id)?;
    Ok(())
}

/// Whether CRIU 4.x is missing (prints SKIP; fails under CI=true).
fn checkpoint_unavailable(test: &str) -> bool {
    let r = warren_runtime::native::checkpoint::criu_version(std::path::Path::new(
        "/usr/local/sbin/criu",
    ));
    !warren_testkit::require(
        test,
        r.is_ok(),
        &r.err().map(|e| e.to_string()).unwrap_or_default(),
    )
}

/// Network setup's share of create time: median create and median
/// `node:netns` (+ resolv.conf) with the wired pool, without it (inline
/// wiring), and for bare sandboxes. Prints the numbers; asserts only that
/// pooled networking stays a small share.
fn create_time_share() -> Result<()> {
    const N: usize = 15;
    let node = Node::new(|_| {})?;
    let run = |network: NetworkSpec, label: &str, node: &Node| -> Result<(u64, u64)> {
        let mut total = Vec::new();
        let mut net = Vec::new();
        for _ in 0..N {
            let spec = node.spec("net-bench", network.clone())?;
            // Let the pool refill between creates (steady state).
            std::thread::sleep(Duration::from_millis(30));
            let t = std::time::Instant::now();
            let info = node.rt().create(&spec, MainIo::default())?;
            total.push(t.elapsed().as_micros() as u64);
            net.push(
                info.phases
                    .iter()
                    .filter(|(p, _)| {
                        p == "node:netns" || p == "node:resolv_conf" || p == "node:egress"
                    })
                    .map(|(_, us)| us)
                    .sum::<u64>(),
            );
            node.rt().destroy(&spec.id)?;
        }
        total.sort();
        net.sort();
        let (t, n) = (total[N / 2], net[N / 2]);
        println!(
            "create_time_share {label}: median create {t} us, network phases {n} us ({:.1}%)",
            n as f64 * 100.0 / t as f64
        );
        Ok((t, n))
    };
    let (_, pooled) = run(NetworkSpec::enabled(), "networked+pool", &node)?;
    run(NetworkSpec::default(), "bare", &node)?;
    drop(node);
    let inline = Node::new(|c| c.netns_pool = 0)?;
    run(NetworkSpec::enabled(), "networked+inline", &inline)?;
    ensure!(pooled < 5_000, "pooled network setup took {pooled} us");
    Ok(())
}

fn trial(name: &'static str, f: fn() -> Result<()>) -> Trial {
    Trial::test(name, move || {
        if !warren_testkit::require_root(name) {
            return Ok(());
        }
        if !warren_testkit::require(
            name,
            std::process::Command::new("nft")
                .arg("--version")
                .output()
                .is_ok(),
            "nft is not installed",
        ) {
            return Ok(());
        }
        // Run on a fresh thread: the lab changes this thread's namespace.
        std::thread::spawn(f)
            .join()
            .map_err(|_| Failed::from("test panicked"))?
            .map_err(|e| Failed::from(format!("{e:#}")))
    })
}

fn main() {
    warren_init::run_if_init();
    let args = Arguments::from_args();
    let tests = vec![
        trial("wiring_and_block_network", wiring_and_block_network),
        trial("default_policy_both_ways", default_policy_both_ways),
        trial(
            "other_sandboxes_are_unreachable",
            other_sandboxes_are_unreachable,
        ),
        trial("allowlist_allows_only_listed", allowlist_allows_only_listed),
        trial(
            "policy_changes_on_a_running_sandbox",
            policy_changes_on_a_running_sandbox,
        ),
        trial(
            "established_connection_is_cut_by_block",
            established_connection_is_cut_by_block,
        ),
        trial(
            "dns_resolves_through_the_forwarder",
            dns_resolves_through_the_forwarder,
        ),
        trial(
            "addresses_are_reused_after_release",
            addresses_are_reused_after_release,
        ),
        trial("nothing_left_after_shutdown", nothing_left_after_shutdown),
        trial("spoofed_source_is_dropped", spoofed_source_is_dropped),
        trial("recover_readopts_network", recover_readopts_network),
        trial("create_time_share", create_time_share),
        trial(
            "checkpointable_sandboxes_restore_with_a_new_address",
            checkpointable_sandboxes_restore_with_a_new_address,
        ),
    ];
    let conclusion = libtest_mimic::run(&args, tests);
    let _ = std::fs::remove_dir_all(init_copy_dir());
    conclusion.exit()
}
