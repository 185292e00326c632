//! Admission control: bounded in-flight requests per connection, per credential and per
//! node, with the shared tier shed before the premium one and a reserve only admin
//! credentials reach. Plain atomics; no I/O.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::config::Tier;

/// Node-wide in-flight accounting.
#[derive(Debug)]
pub struct Admission {
    in_flight: AtomicU32,
    /// Premium requests are admitted up to this many in flight on the node.
    premium_max: u32,
    /// Shared requests are admitted only below this many.
    shared_max: u32,
    per_connection_max: u32,
    /// Requests refused, by tier (premium, shared).
    shed: [AtomicU64; 2],
    /// Premium requests of credentials that are not admin are admitted only below this
    /// (`premium_max` minus the admin reserve).
    non_admin_max: u32,
    /// In flight per credential (index: the credential's position in the node's client
    /// list).
    credentials: Box<[AtomicU32]>,
    per_credential_max: u32,
}

/// Who a request is admitted for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The credential's tier.
    pub tier: Tier,
    /// Whether the credential is an admin one (it may use the admin reserve).
    pub admin: bool,
    /// The credential's index in the node's client list.
    pub credential: usize,
}

/// Why a request was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shed {
    /// Its connection has `in_flight_per_connection_max` requests in flight.
    Connection,
    /// Its credential has `in_flight_per_credential_max` requests in flight.
    Credential,
    /// The node's bound for its tier (and role) is reached.
    Node,
}

/// A connection's in-flight count.
#[derive(Debug, Default)]
pub struct ConnectionLoad(AtomicU32);

impl Admission {
    /// Limits: `node_max` in flight on the node; shared traffic shed from `shared_percent` of
    /// it; `per_connection_max` per connection.
    pub fn new(node_max: u32, shared_percent: u32, per_connection_max: u32) -> Self {
        let shared_max = (u64::from(node_max) * u64::from(shared_percent) / 100).max(1) as u32;
        Self {
            in_flight: AtomicU32::new(0),
            premium_max: node_max,
            shared_max,
            per_connection_max,
            shed: [AtomicU64::new(0), AtomicU64::new(0)],
            non_admin_max: node_max,
            credentials: Box::new([]),
            per_credential_max: u32::MAX,
        }
    }

    /// The same limits, with `admin_reserved` of the node's in-flight requests left to admin
    /// credentials and at most `per_credential_max` in flight for each of `credentials`.
    pub fn with_quotas(
        mut self,
        admin_reserved: u32,
        credentials: usize,
        per_credential_max: u32,
    ) -> Self {
        self.non_admin_max = self.premium_max.saturating_sub(admin_reserved).max(1);
        self.shared_max = self.shared_max.min(self.non_admin_max);
        self.credentials = (0..credentials).map(|_| AtomicU32::new(0)).collect();
        self.per_credential_max = per_credential_max;
        self
    }

    /// Admits one request for `claim` on `conn`, or says which bound refused it (counted as
    /// shed).
    pub fn try_admit_for(&self, conn: &ConnectionLoad, claim: Claim) -> Result<(), Shed> {
        let Some(cred) = self.credentials.get(claim.credential) else {
            return self.admit_on(conn, claim.tier, claim.admin);
        };
        if cred.fetch_add(1, Ordering::AcqRel) >= self.per_credential_max {
            cred.fetch_sub(1, Ordering::AcqRel);
            self.shed[claim.tier as usize].fetch_add(1, Ordering::Relaxed);
            return Err(Shed::Credential);
        }
        self.admit_on(conn, claim.tier, claim.admin)
            .inspect_err(|_| {
                cred.fetch_sub(1, Ordering::AcqRel);
            })
    }

    /// Releases `n` requests of `conn` admitted for `credential`.
    pub fn release_for(&self, conn: &ConnectionLoad, credential: usize, n: u32) {
        if n == 0 {
            return;
        }
        if let Some(c) = self.credentials.get(credential) {
            c.fetch_sub(n, Ordering::AcqRel);
        }
        self.release(conn, n);
    }

    /// Admits one request of `tier` on `conn`, or refuses it (counted as shed).
    pub fn try_admit(&self, conn: &ConnectionLoad, tier: Tier) -> bool {
        self.admit_on(conn, tier, true).is_ok()
    }

    fn admit_on(&self, conn: &ConnectionLoad, tier: Tier, admin: bool) -> Result<(), Shed> {
        if conn.0.fetch_add(1, Ordering::AcqRel) >= self.per_connection_max {
            conn.0.fetch_sub(1, Ordering::AcqRel);
            self.shed[tier as usize].fetch_add(1, Ordering::Relaxed);
            return Err(Shed::Connection);
        }
        let limit = match tier {
            Tier::Premium if admin => self.premium_max,
            Tier::Premium => self.non_admin_max,
            Tier::Shared => self.shared_max,
        };
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= limit {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            conn.0.fetch_sub(1, Ordering::AcqRel);
            self.shed[tier as usize].fetch_add(1, Ordering::Relaxed);
            return Err(Shed::Node);
        }
        Ok(())
    }

    /// Releases `n` admitted requests of `conn`.
    pub fn release(&self, conn: &ConnectionLoad, n: u32) {
        conn.0.fetch_sub(n, Ordering::AcqRel);
        self.in_flight.fetch_sub(n, Ordering::AcqRel);
    }

    /// Requests in flight on the node.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Requests shed so far: (premium, shared).
    pub fn shed(&self) -> (u64, u64) {
        (
            self.shed[0].load(Ordering::Relaxed),
            self.shed[1].load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_traffic_is_shed_before_premium() {
        let a = Admission::new(10, 50, 100);
        let (c1, c2) = (ConnectionLoad::default(), ConnectionLoad::default());
        let shared = (0..10).filter(|_| a.try_admit(&c1, Tier::Shared)).count();
        assert_eq!(
            shared, 5,
            "shared stops at 50% of the node's in-flight limit"
        );
        let premium = (0..10).filter(|_| a.try_admit(&c2, Tier::Premium)).count();
        assert_eq!(premium, 5, "premium fills the rest");
        assert_eq!(a.shed(), (5, 5));
        a.release(&c1, 5);
        assert!(a.try_admit(&c2, Tier::Premium));
    }

    #[test]
    fn admins_keep_a_reserve_that_other_premium_credentials_cannot_take() {
        let a = Admission::new(10, 50, 100).with_quotas(2, 3, 100);
        let c = ConnectionLoad::default();
        let premium = Claim {
            tier: Tier::Premium,
            admin: false,
            credential: 0,
        };
        let admin = Claim {
            admin: true,
            credential: 1,
            ..premium
        };
        let n = (0..10)
            .filter(|_| a.try_admit_for(&c, premium).is_ok())
            .count();
        assert_eq!(n, 8, "premium stops short of the admin reserve");
        assert_eq!(a.try_admit_for(&c, premium), Err(Shed::Node));
        assert_eq!(a.try_admit_for(&c, admin), Ok(()));
        assert_eq!(a.try_admit_for(&c, admin), Ok(()));
        assert_eq!(a.try_admit_for(&c, admin), Err(Shed::Node));
        a.release_for(&c, 0, 8);
        a.release_for(&c, 1, 2);
        assert_eq!(a.in_flight(), 0);
    }

    #[test]
    fn one_credential_cannot_take_more_than_its_quota_over_all_its_connections() {
        let a = Admission::new(100, 100, 100).with_quotas(0, 2, 5);
        let conns: Vec<_> = (0..3).map(|_| ConnectionLoad::default()).collect();
        let greedy = Claim {
            tier: Tier::Shared,
            admin: false,
            credential: 0,
        };
        let admitted = conns
            .iter()
            .flat_map(|c| (0..4).map(move |_| c))
            .filter(|c| a.try_admit_for(c, greedy).is_ok())
            .count();
        assert_eq!(admitted, 5);
        assert_eq!(a.try_admit_for(&conns[0], greedy), Err(Shed::Credential));
        let other = Claim {
            credential: 1,
            ..greedy
        };
        assert_eq!(
            a.try_admit_for(&conns[0], other),
            Ok(()),
            "another credential still gets in"
        );
        a.release_for(&conns[0], 0, 4);
        assert_eq!(a.try_admit_for(&conns[1], greedy), Ok(()));
    }

    #[test]
    fn one_connection_cannot_take_the_whole_node() {
        let a = Admission::new(100, 100, 3);
        let c = ConnectionLoad::default();
        assert_eq!(
            (0..10).filter(|_| a.try_admit(&c, Tier::Premium)).count(),
            3
        );
        assert_eq!(a.in_flight(), 3);
    }
}
