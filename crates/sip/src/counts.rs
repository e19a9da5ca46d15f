//! What each address holds (connections, requests in progress), capped
//! per address and in all. An IPv6 /64 counts as one address, as in every
//! other rule of the edge.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

pub struct Counts {
    max_total: usize,
    per_address: usize,
    /// (total, per address id)
    held: Mutex<(usize, HashMap<u128, usize>)>,
}

impl Counts {
    pub fn new(max_total: usize, per_address: usize) -> Counts {
        Counts { max_total, per_address, held: Mutex::new((0, HashMap::new())) }
    }

    /// Takes one for `ip`; false (nothing taken) over either cap.
    pub fn try_hold(&self, ip: IpAddr) -> bool {
        let id = palisade_guard::limits::ip_id(ip);
        let mut held = self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (total, map) = &mut *held;
        let mine = map.entry(id).or_insert(0);
        if *total >= self.max_total || *mine >= self.per_address {
            if *mine == 0 {
                map.remove(&id);
            }
            return false;
        }
        *mine += 1;
        *total += 1;
        true
    }

    /// Gives one back (taken by [`Counts::try_hold`]).
    pub fn release(&self, ip: IpAddr) {
        let id = palisade_guard::limits::ip_id(ip);
        let mut held = self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (total, map) = &mut *held;
        if let Some(n) = map.get_mut(&id) {
            *n -= 1;
            *total -= 1;
            if *n == 0 {
                map.remove(&id);
            }
        }
    }

    /// [`Counts::try_hold`], given back when the guard drops.
    pub fn hold(&self, ip: IpAddr) -> Option<Held<'_>> {
        self.try_hold(ip).then_some(Held { counts: self, ip })
    }
}

pub struct Held<'a> {
    counts: &'a Counts,
    ip: IpAddr,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.counts.release(self.ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_address_and_in_all() {
        let c = Counts::new(3, 2);
        let (a, b, c6a, c6b): (IpAddr, IpAddr, IpAddr, IpAddr) = (
            "192.0.2.1".parse().unwrap(),
            "192.0.2.2".parse().unwrap(),
            "2001:db8::1".parse().unwrap(),
            "2001:db8::ffff".parse().unwrap(),
        );
        assert!(c.try_hold(a) && c.try_hold(a));
        assert!(!c.try_hold(a), "over the per-address cap");
        // One /64 is one address.
        assert!(c.try_hold(c6a));
        assert!(!c.try_hold(c6b), "over the total cap");
        c.release(a);
        assert!(c.try_hold(c6b));
        assert!(!c.try_hold(c6a), "the /64 holds two");
        // A release of what was never held changes nothing.
        c.release(b);
        assert!(!c.try_hold(b));
        {
            c.release(c6a);
            let guard = c.hold(b).expect("room for one");
            assert!(c.hold(b).is_none());
            drop(guard);
        }
        assert!(c.hold(b).is_some());
    }
}
