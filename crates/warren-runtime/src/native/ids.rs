//! Host id range slots: one per live sandbox, never shared.

/// A bitmap allocator of id-range slots.
pub(crate) struct IdAllocator {
    used: Vec<u64>,
    slots: u32,
    next: u32,
}

impl IdAllocator {
    pub(crate) fn new(slots: u32) -> Self {
        IdAllocator {
            used: vec![0; slots.div_ceil(64) as usize],
            slots,
            next: 0,
        }
    }

    fn is_used(&self, s: u32) -> bool {
        self.used[(s / 64) as usize] & (1 << (s % 64)) != 0
    }

    fn set(&mut self, s: u32, v: bool) {
        let w = &mut self.used[(s / 64) as usize];
        if v {
            *w |= 1 << (s % 64);
        } else {
            *w &= !(1 << (s % 64));
        }
    }

    /// Takes a free slot, scanning round-robin so a just-released range is
    /// the last to be reused.
    pub(crate) fn allocate(&mut self) -> Option<u32> {
        for i in 0..self.slots {
            let s = (self.next + i) % self.slots;
            if !self.is_used(s) {
                self.set(s, true);
                self.next = (s + 1) % self.slots;
                return Some(s);
            }
        }
        None
    }

    /// Marks a slot used (re-adoption after a restart).
    pub(crate) fn claim(&mut self, s: u32) {
        if s < self.slots {
            self.set(s, true);
        }
    }

    pub(crate) fn release(&mut self, s: u32) {
        if s < self.slots {
            self.set(s, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_unique_until_released() {
        let mut a = IdAllocator::new(130);
        let got: Vec<u32> = (0..130).map(|_| a.allocate().unwrap()).collect();
        let mut sorted = got.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 130);
        assert_eq!(a.allocate(), None);
        a.release(77);
        assert_eq!(a.allocate(), Some(77));
        assert_eq!(a.allocate(), None);
    }

    #[test]
    fn claimed_slots_are_skipped() {
        let mut a = IdAllocator::new(4);
        a.claim(0);
        a.claim(2);
        assert_eq!(a.allocate(), Some(1));
        assert_eq!(a.allocate(), Some(3));
        assert_eq!(a.allocate(), None);
    }

    #[test]
    fn released_slot_is_reused_last() {
        let mut a = IdAllocator::new(3);
        let s0 = a.allocate().unwrap();
        a.release(s0);
        assert_ne!(a.allocate(), Some(s0));
    }
}
