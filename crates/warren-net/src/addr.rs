//! The node's sandbox address pool: one /30 per sandbox.
//!
//! Lease `i` owns block `i` of the CIDR: `.0` network, `.1` the gateway on
//! the host side of the veth, `.2` the sandbox, `.3` broadcast. Free leases
//! are handed out oldest-freed first, so an address that was just released
//! is the last to be reused (connections of the old owner die out first).

use std::collections::VecDeque;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// Addresses of one lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SandboxAddress {
    /// Lease index (names the host interface; recorded for re-adoption).
    pub index: u32,
    /// The sandbox's own address (`eth0` inside).
    pub address: Ipv4Addr,
    /// The host side of the veth: the sandbox's default gateway and DNS.
    pub gateway: Ipv4Addr,
    /// Prefix length of the link (30).
    pub prefix: u8,
}

/// Prefix length of each sandbox link.
pub const LINK_PREFIX: u8 = 30;

/// Hands out /30 blocks of a CIDR.
#[derive(Debug)]
pub struct AddressPool {
    net: Ipv4Net,
    free: VecDeque<u32>,
    used: Vec<bool>,
}

impl AddressPool {
    /// A pool over `net` (prefix at most /30).
    pub fn new(net: Ipv4Net) -> Option<Self> {
        if net.prefix_len() > LINK_PREFIX {
            return None;
        }
        let blocks = 1u64 << (LINK_PREFIX - net.prefix_len());
        let blocks = u32::try_from(blocks.min(1 << 20)).ok()?;
        Some(AddressPool {
            net: net.trunc(),
            free: (0..blocks).collect(),
            used: vec![false; blocks as usize],
        })
    }

    /// How many leases the pool holds in all.
    pub fn capacity(&self) -> u32 {
        self.used.len() as u32
    }

    /// How many are free.
    pub fn available(&self) -> usize {
        self.free.len()
    }

    /// The addresses of lease `index`.
    pub fn address(&self, index: u32) -> Option<SandboxAddress> {
        if index as usize >= self.used.len() {
            return None;
        }
        let base = u32::from(self.net.network()) + index * 4;
        Some(SandboxAddress {
            index,
            address: Ipv4Addr::from(base + 2),
            gateway: Ipv4Addr::from(base + 1),
            prefix: LINK_PREFIX,
        })
    }

    /// Whether lease `index` is allocated or claimed.
    pub fn is_used(&self, index: u32) -> bool {
        self.used.get(index as usize).copied().unwrap_or(false)
    }

    /// The next free lease (oldest freed first).
    pub fn allocate(&mut self) -> Option<SandboxAddress> {
        let i = self.free.pop_front()?;
        self.used[i as usize] = true;
        self.address(i)
    }

    /// Marks `index` as used (re-adoption after a restart). False if it is
    /// out of range or already used.
    pub fn claim(&mut self, index: u32) -> bool {
        match self.used.get(index as usize) {
            Some(false) => {
                self.used[index as usize] = true;
                self.free.retain(|&i| i != index);
                true
            }
            _ => false,
        }
    }

    /// Returns `index` to the pool (to the back of the queue).
    pub fn release(&mut self, index: u32) {
        if let Some(u) = self.used.get_mut(index as usize) {
            if *u {
                *u = false;
                self.free.push_back(index);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_and_fifo_reuse() {
        let mut p = AddressPool::new("10.88.0.0/28".parse().unwrap()).unwrap();
        assert_eq!(p.capacity(), 4);
        let a = p.allocate().unwrap();
        assert_eq!(a.gateway, Ipv4Addr::new(10, 88, 0, 1));
        assert_eq!(a.address, Ipv4Addr::new(10, 88, 0, 2));
        let b = p.allocate().unwrap();
        assert_eq!(b.address, Ipv4Addr::new(10, 88, 0, 6));
        p.release(a.index);
        // Fresh blocks first, the just-freed one last.
        assert_eq!(p.allocate().unwrap().index, 2);
        assert_eq!(p.allocate().unwrap().index, 3);
        assert_eq!(p.allocate().unwrap().index, a.index);
        assert!(p.allocate().is_none());
        p.release(b.index);
        p.release(b.index); // double release is harmless
        assert_eq!(p.available(), 1);
    }

    #[test]
    fn claim_for_recovery() {
        let mut p = AddressPool::new("10.0.0.0/24".parse().unwrap()).unwrap();
        assert!(p.claim(5));
        assert!(!p.claim(5));
        assert!(!p.claim(64));
        assert_eq!(p.available(), 63);
        for _ in 0..63 {
            assert_ne!(p.allocate().unwrap().index, 5);
        }
        assert!(AddressPool::new("10.0.0.0/31".parse().unwrap()).is_none());
        let q = AddressPool::new("10.0.0.7/29".parse().unwrap()).unwrap();
        assert_eq!(q.address(0).unwrap().address, Ipv4Addr::new(10, 0, 0, 2));
    }
}
