//! The node's nftables table: generated text, applied with `nft -f -`.
//!
//! One table (`inet <name>`) holds every rule: it is created whole at start
//! (replacing a previous run's), deleted at shutdown, and only its sets
//! change at run time (per-sandbox egress modes). Default sandboxes need no
//! per-sandbox rule: the static chains match the interface prefix and the
//! sandbox CIDR.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;

/// Destinations no sandbox may reach under any policy (besides the sandbox
/// CIDR itself and the node's own addresses, handled by the input hook).
pub const DENIED_V4: &[&str] = &[
    "0.0.0.0/8",      // "this network"
    "10.0.0.0/8",     // RFC 1918
    "100.64.0.0/10",  // carrier-grade NAT
    "127.0.0.0/8",    // loopback
    "169.254.0.0/16", // link-local, incl. cloud metadata 169.254.169.254
    "172.16.0.0/12",  // RFC 1918
    "192.0.0.0/24",   // IETF protocol assignments
    "192.168.0.0/16", // RFC 1918
    "198.18.0.0/15",  // benchmarking
    "224.0.0.0/4",    // multicast
    "240.0.0.0/4",    // reserved, incl. limited broadcast
];

/// Longest an `nft` run may take.
const NFT_TIMEOUT: Duration = Duration::from_secs(10);

/// Inputs of the static ruleset.
#[derive(Debug, Clone)]
pub struct Ruleset {
    pub table: String,
    /// Interface name prefix of the sandboxes' host-side veths.
    pub iface_prefix: String,
    pub cidr: Ipv4Net,
    /// Port the DNS forwarder listens on (all node addresses; reachable
    /// only from sandbox interfaces and loopback).
    pub dns_port: u16,
    /// Extra destinations to deny (operator-configured).
    pub extra_denied: Vec<Ipv4Net>,
    /// The node did not forward before we turned `ip_forward` on: drop
    /// forwarding that involves no sandbox interface.
    pub forward_only_sandboxes: bool,
}

impl Ruleset {
    /// The denied set's elements, merged (nft refuses overlapping intervals).
    pub fn denied(&self) -> Vec<Ipv4Net> {
        let mut all: Vec<Ipv4Net> = DENIED_V4
            .iter()
            .map(|s| s.parse().expect("constant CIDR"))
            .collect();
        all.push(self.cidr);
        all.extend(self.extra_denied.iter().copied());
        Ipv4Net::aggregate(&all)
    }

    /// The full table, as `nft -f` input that replaces any previous copy
    /// atomically.
    pub fn render(&self) -> String {
        let t = &self.table;
        let w = format!("\"{}*\"", self.iface_prefix);
        let cidr = self.cidr;
        let port = self.dns_port;
        let denied = self
            .denied()
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let other_forward = if self.forward_only_sandboxes {
            "        ct state established,related accept\n        drop\n"
        } else {
            ""
        };
        format!(
            r#"add table inet {t}
delete table inet {t}
table inet {t} {{
    set denied {{ type ipv4_addr; flags interval; elements = {{ {denied} }} }}
    set blocked {{ type ipv4_addr; }}
    set limited {{ type ipv4_addr; }}
    set allowed {{ type ipv4_addr . ipv4_addr; flags interval; }}

    chain pre {{
        type filter hook prerouting priority raw; policy accept;
        iifname {w} meta nfproto != ipv4 drop
        iifname {w} ip saddr != {cidr} drop
        iifname {w} fib saddr . iif oif missing drop
    }}
    chain dns {{
        type nat hook prerouting priority dstnat; policy accept;
        iifname {w} fib daddr type local udp dport 53 redirect to :{port}
        iifname {w} fib daddr type local tcp dport 53 redirect to :{port}
    }}
    chain input {{
        type filter hook input priority filter; policy accept;
        iifname {w} jump sandbox_to_node
        iifname != "lo" meta l4proto {{ tcp, udp }} th dport {port} drop
    }}
    chain sandbox_to_node {{
        ip saddr @blocked drop
        ct state established,related accept
        meta l4proto {{ tcp, udp }} th dport {port} ct status dnat accept
        drop
    }}
    chain output {{
        type filter hook output priority filter; policy accept;
        oifname {w} ct state established,related accept
        oifname {w} drop
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        iifname {w} jump sandbox_out
        oifname {w} ct state established,related accept
        oifname {w} drop
{other_forward}    }}
    chain sandbox_out {{
        ip saddr @blocked drop
        oifname {w} drop
        ip daddr @denied drop
        ip saddr @limited jump limited
        accept
    }}
    chain limited {{
        ip saddr . ip daddr @allowed accept
        drop
    }}
    chain post {{
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr {cidr} oifname != {w} masquerade
    }}
}}
"#
        )
    }
}

/// `nft -f -` commands that move sandbox `addr` from policy `old` to `new`.
pub fn policy_change(table: &str, addr: Ipv4Addr, old: &Mode, new: &Mode) -> String {
    let mut s = String::new();
    match old {
        Mode::Default => {}
        Mode::Blocked => s.push_str(&format!(
            "delete element inet {table} blocked {{ {addr} }}\n"
        )),
        Mode::Limited(nets) => {
            s.push_str(&format!(
                "delete element inet {table} limited {{ {addr} }}\n"
            ));
            if !nets.is_empty() {
                s.push_str(&format!(
                    "delete element inet {table} allowed {{ {} }}\n",
                    pairs(addr, nets)
                ));
            }
        }
    }
    match new {
        Mode::Default => {}
        Mode::Blocked => s.push_str(&format!("add element inet {table} blocked {{ {addr} }}\n")),
        Mode::Limited(nets) => {
            if !nets.is_empty() {
                s.push_str(&format!(
                    "add element inet {table} allowed {{ {} }}\n",
                    pairs(addr, nets)
                ));
            }
            s.push_str(&format!("add element inet {table} limited {{ {addr} }}\n"));
        }
    }
    s
}

fn pairs(addr: Ipv4Addr, nets: &[Ipv4Net]) -> String {
    nets.iter()
        .map(|n| format!("{addr} . {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A sandbox's egress mode as the table sees it (IPv4 only; allowlist
/// entries merged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Default,
    Blocked,
    Limited(Vec<Ipv4Net>),
}

/// Runs `nft -f -` with `script` on stdin.
pub fn apply(script: &str) -> std::io::Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(script.as_bytes())?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            if status.success() {
                return Ok(());
            }
            return Err(std::io::Error::other(format!(
                "nft failed ({status}): {}",
                err.trim()
            )));
        }
        if started.elapsed() > NFT_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::other("nft timed out"));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Deletes the table if it exists.
pub fn delete_table(table: &str) -> std::io::Result<()> {
    apply(&format!(
        "add table inet {table}\ndelete table inet {table}\n"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs() -> Ruleset {
        Ruleset {
            table: "warren_test".into(),
            iface_prefix: "wr".into(),
            cidr: "10.88.0.0/16".parse().unwrap(),
            dns_port: 5353,
            extra_denied: vec![],
            forward_only_sandboxes: false,
        }
    }

    #[test]
    fn denied_is_merged_and_covers_the_cidr() {
        let d = rs().denied();
        // 10.88/16 lies inside 10/8: no overlapping element.
        assert!(d.iter().any(|n| n.to_string() == "10.0.0.0/8"));
        assert!(!d.iter().any(|n| n.to_string() == "10.88.0.0/16"));
        let mut r = rs();
        r.cidr = "198.19.0.0/16".parse().unwrap();
        assert!(r.denied().iter().any(|n| n.contains(&r.cidr)));
        r.cidr = "203.0.113.0/24".parse().unwrap();
        assert!(r.denied().contains(&r.cidr));
    }

    #[test]
    fn render_has_the_rules() {
        let s = rs().render();
        assert!(s.starts_with("add table inet warren_test\ndelete table inet warren_test\n"));
        assert!(s.contains("redirect to :5353"));
        assert!(s.contains("ip saddr 10.88.0.0/16 oifname != \"wr*\" masquerade"));
        assert!(s.contains("169.254.0.0/16"));
        assert!(!s.contains("        drop\n    }\n    chain sandbox_out"));
        let mut r = rs();
        r.forward_only_sandboxes = true;
        assert!(r
            .render()
            .contains("        drop\n    }\n    chain sandbox_out"));
    }

    #[test]
    fn policy_changes() {
        let a: Ipv4Addr = "10.88.0.2".parse().unwrap();
        let nets = vec!["203.0.113.0/24".parse().unwrap()];
        let s = policy_change("t", a, &Mode::Default, &Mode::Limited(nets.clone()));
        assert_eq!(
            s,
            "add element inet t allowed { 10.88.0.2 . 203.0.113.0/24 }\nadd element inet t limited { 10.88.0.2 }\n"
        );
        let s = policy_change("t", a, &Mode::Limited(nets), &Mode::Blocked);
        assert!(s.contains("delete element inet t limited { 10.88.0.2 }"));
        assert!(s.ends_with("add element inet t blocked { 10.88.0.2 }\n"));
        assert_eq!(policy_change("t", a, &Mode::Default, &Mode::Default), "");
        let s = policy_change("t", a, &Mode::Default, &Mode::Limited(vec![]));
        assert_eq!(s, "add element inet t limited { 10.88.0.2 }\n");
    }
}
