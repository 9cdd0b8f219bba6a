//! The registry's per-address table: how many clients each address holds
//! (`--max-clients-per-ip`) and how fast it connects
//! (`--connect-rate-per-ip`, `--connect-burst-per-ip`), so that one address
//! cannot take every `--max-clients` slot, nor a connect flood from it cost
//! everyone else.
//!
//! An address is the client's real one: the PROXY header's behind a trusted
//! balancer, the socket's otherwise. IPv4 addresses count one by one; IPv6
//! addresses by /64, the block one host is given (an IPv4-mapped IPv6
//! address counts as the IPv4 address).
//!
//! The connect rate is a GCRA (the generic cell rate algorithm, a token
//! bucket kept as one instant): each address's entry holds the time its
//! bucket is full again, so an entry is dropped as soon as its address holds
//! no client and that time has passed. Entries held only for their bucket
//! ("resting") are bounded by [`PerIpLimits::resting_max`]; at that bound a
//! leaving address is forgotten at once (it starts afresh, with a full
//! bucket, next time), so a flood from many addresses cannot grow the table
//! without bound, and never locks out an address the table has no room
//! for. Entries with clients are bounded by `--max-clients`.
//!
//! With both limits off (the default) nothing is kept at all.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use kv_log_macro::warn;
use log::kv::Value;

use crate::logging::Throttle;
use crate::messages::{ClientId, PerIpRefusal};

/// Entries kept only for their connect-rate bucket, at most, by default:
/// an entry is 64 bytes, so the table at this bound, beside 10 000 clients'
/// entries, is 131 072 buckets of 65 bytes: 8 MiB.
pub const RESTING_MAX: usize = 65_536;

/// How often the registry drops entries whose bucket is full again, and
/// gives back the table's room once it is mostly empty.
pub(crate) const PRUNE_EVERY: Duration = Duration::from_secs(1);

/// The longest time between connects a rate can ask for: a year.
const INTERVAL_MAX: Duration = Duration::from_secs(365 * 24 * 3600);

/// A table with room for more than this many entries times its length is
/// shrunk at the next prune (never below room for [`SHRINK_FLOOR`]).
const SHRINK_RATIO: usize = 4;
const SHRINK_FLOOR: usize = 64;

/// How fast one address may connect: one connection every `interval` on
/// average, and up to `burst` at once after a quiet spell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectRate {
    /// Time between connects at the sustained rate.
    pub interval: Duration,
    /// Connects allowed back to back (at least 1).
    pub burst: u32,
}

impl ConnectRate {
    /// `per_second` connects a second (more than 0), `burst` at once. A
    /// rate under one a year is one a year, so that no instant the table
    /// computes can overflow.
    pub fn per_second(per_second: f64, burst: u32) -> ConnectRate {
        let interval = Duration::try_from_secs_f64(1.0 / per_second).unwrap_or(Duration::MAX);
        ConnectRate {
            interval: interval.clamp(Duration::from_nanos(1), INTERVAL_MAX),
            burst: burst.max(1),
        }
    }

    /// How far ahead of now an address's bucket may be full again and the
    /// address still connect: the burst, less the connect itself.
    fn tolerance(&self) -> Duration {
        self.interval.saturating_mul(self.burst - 1)
    }
}

/// The per-address limits; `Default`: both off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PerIpLimits {
    /// Clients one address may hold at once (`--max-clients-per-ip`).
    pub max_clients: Option<usize>,
    /// How fast one address may connect (`--connect-rate-per-ip`).
    pub connect_rate: Option<ConnectRate>,
    /// Entries kept only for their bucket, at most ([`RESTING_MAX`]).
    pub resting_max: usize,
}

impl Default for PerIpLimits {
    fn default() -> PerIpLimits {
        PerIpLimits {
            max_clients: None,
            connect_rate: None,
            resting_max: RESTING_MAX,
        }
    }
}

impl PerIpLimits {
    /// Whether any limit is on (and so a table kept).
    pub fn any(&self) -> bool {
        self.max_clients.is_some() || self.connect_rate.is_some()
    }
}

/// What an address is counted under: an IPv4 address, or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum AddressKey {
    V4(Ipv4Addr),
    V6Net(u64),
}

impl From<IpAddr> for AddressKey {
    fn from(ip: IpAddr) -> AddressKey {
        match ip {
            IpAddr::V4(v4) => AddressKey::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddressKey::V4(v4),
                None => AddressKey::V6Net((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

impl fmt::Display for AddressKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddressKey::V4(v4) => v4.fmt(f),
            AddressKey::V6Net(net) => write!(f, "{}/64", Ipv6Addr::from(u128::from(*net) << 64)),
        }
    }
}

struct Slot {
    /// Its clients now.
    clients: usize,
    /// When its bucket is full again (GCRA's theoretical arrival time).
    full_at: Instant,
    /// Its refusals, logged at most once per period with a count.
    refusals: Throttle,
}

/// Refusals since start, and the table's size now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PerIpCounts {
    /// Connections refused: their address held `--max-clients-per-ip`.
    pub too_many: u64,
    /// Connections refused: their address connected faster than
    /// `--connect-rate-per-ip` allows.
    pub too_fast: u64,
    /// Addresses (IPv6: /64 blocks) in the table now.
    pub addresses: usize,
}

/// The table; its logic is synchronous and takes the time as an argument.
#[derive(Default)]
pub(crate) struct PerIp {
    limits: PerIpLimits,
    table: HashMap<AddressKey, Slot>,
    /// Entries without a client.
    resting: usize,
    counts: PerIpCounts,
}

impl PerIp {
    pub(crate) fn new(limits: PerIpLimits) -> PerIp {
        PerIp {
            limits,
            ..PerIp::default()
        }
    }

    /// Counts a new client of `peer` (client `id`) unless its address is
    /// over a limit; a refusal is counted and logged (at most once per
    /// address per period).
    pub(crate) fn admit(
        &mut self,
        id: ClientId,
        peer: SocketAddr,
        now: Instant,
    ) -> Result<(), PerIpRefusal> {
        if !self.limits.any() {
            return Ok(());
        }
        let key = AddressKey::from(peer.ip());
        let slot = self.table.entry(key).or_insert_with(|| {
            self.resting += 1;
            Slot {
                clients: 0,
                full_at: now,
                refusals: Throttle::default(),
            }
        });
        let refusal = if self
            .limits
            .max_clients
            .is_some_and(|max| slot.clients >= max)
        {
            Some(PerIpRefusal::TooMany)
        } else {
            self.limits.connect_rate.and_then(|rate| {
                let full_at = slot.full_at.max(now);
                if full_at > now + rate.tolerance() {
                    return Some(PerIpRefusal::TooFast);
                }
                slot.full_at = full_at + rate.interval;
                None
            })
        };
        let Some(refusal) = refusal else {
            self.resting -= usize::from(slot.clients == 0);
            slot.clients += 1;
            return Ok(());
        };
        match refusal {
            PerIpRefusal::TooMany => self.counts.too_many += 1,
            PerIpRefusal::TooFast => self.counts.too_fast += 1,
        }
        if let Some(suppressed) = slot.refusals.allow() {
            warn!("client rejected", {
                client_id: id,
                peer: Value::from_display(&peer),
                address: Value::from_display(&key),
                address_clients: slot.clients,
                reason: Value::from_display(&refusal),
                suppressed: suppressed,
            });
        }
        Err(refusal)
    }

    /// Counts a client of `peer` gone.
    pub(crate) fn release(&mut self, peer: SocketAddr, now: Instant) {
        let key = AddressKey::from(peer.ip());
        let Some(slot) = self.table.get_mut(&key) else {
            return;
        };
        slot.clients = slot.clients.saturating_sub(1);
        if slot.clients > 0 {
            return;
        }
        if slot.full_at <= now {
            self.table.remove(&key);
            return;
        }
        self.resting += 1;
        if self.resting > self.limits.resting_max {
            self.prune(now);
        }
        if self.resting > self.limits.resting_max {
            // Still no room: this address starts afresh next time.
            self.table.remove(&key);
            self.resting -= 1;
        }
    }

    /// Drops the entries with no client whose bucket is full again, and
    /// gives back the room of a table that emptied.
    pub(crate) fn prune(&mut self, now: Instant) {
        self.table
            .retain(|_, slot| slot.clients > 0 || slot.full_at > now);
        self.resting = self.table.values().filter(|s| s.clients == 0).count();
        let room = self.table.len().max(SHRINK_FLOOR) * SHRINK_RATIO;
        if self.table.capacity() > room {
            self.table.shrink_to_fit();
        }
    }

    /// Refusals so far, and the table's size.
    pub(crate) fn counts(&self) -> PerIpCounts {
        PerIpCounts {
            addresses: self.table.len(),
            ..self.counts
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().expect("an address"), 4000)
    }

    fn limits(max_clients: Option<usize>, rate: Option<ConnectRate>) -> PerIp {
        PerIp::new(PerIpLimits {
            max_clients,
            connect_rate: rate,
            resting_max: 4,
        })
    }

    fn every_second(burst: u32) -> Option<ConnectRate> {
        Some(ConnectRate::per_second(1.0, burst))
    }

    const ID: ClientId = ClientId(1);

    #[test]
    fn with_no_limit_nothing_is_kept() {
        let mut table = PerIp::new(PerIpLimits::default());
        let now = Instant::now();
        for _ in 0..100 {
            assert_eq!(table.admit(ID, peer("192.0.2.1"), now), Ok(()));
        }
        assert_eq!(table.counts(), PerIpCounts::default());
    }

    #[test]
    fn an_address_holds_at_most_its_clients_and_others_are_not_counted_with_it() {
        let mut table = limits(Some(2), None);
        let now = Instant::now();
        assert_eq!(table.admit(ID, peer("192.0.2.1"), now), Ok(()));
        assert_eq!(table.admit(ID, peer("192.0.2.1"), now), Ok(()));
        let third = table.admit(ID, peer("192.0.2.1"), now);
        assert_eq!(third, Err(PerIpRefusal::TooMany));
        assert_eq!(table.admit(ID, peer("192.0.2.2"), now), Ok(()));
        table.release(peer("192.0.2.1"), now);
        assert_eq!(table.admit(ID, peer("192.0.2.1"), now), Ok(()));
        assert_eq!(table.counts().too_many, 1);
        assert_eq!(table.counts().addresses, 2);
        for ip in ["192.0.2.1", "192.0.2.1", "192.0.2.2"] {
            table.release(peer(ip), now);
        }
        assert_eq!(table.counts().addresses, 0, "no client, no entry");
    }

    #[test]
    fn ipv6_counts_by_64_and_mapped_ipv4_as_ipv4() {
        let mut table = limits(Some(1), None);
        let now = Instant::now();
        assert_eq!(table.admit(ID, peer("2001:db8:1:2::1"), now), Ok(()));
        let same_64 = table.admit(ID, peer("2001:db8:1:2:ffff::9"), now);
        assert_eq!(same_64, Err(PerIpRefusal::TooMany));
        assert_eq!(table.admit(ID, peer("2001:db8:1:3::1"), now), Ok(()));
        assert_eq!(table.admit(ID, peer("198.51.100.1"), now), Ok(()));
        let mapped = table.admit(ID, peer("::ffff:198.51.100.1"), now);
        assert_eq!(mapped, Err(PerIpRefusal::TooMany));
        let key = AddressKey::from(peer("2001:db8:1:2::1").ip());
        assert_eq!(key.to_string(), "2001:db8:1:2::/64");
    }

    #[test]
    fn a_burst_is_let_through_then_one_connect_per_interval() {
        let mut table = limits(None, every_second(3));
        let start = Instant::now();
        let ip = peer("192.0.2.1");
        for _ in 0..3 {
            assert_eq!(table.admit(ID, ip, start), Ok(()));
        }
        assert_eq!(table.admit(ID, ip, start), Err(PerIpRefusal::TooFast));
        let later = start + Duration::from_millis(999);
        assert_eq!(table.admit(ID, ip, later), Err(PerIpRefusal::TooFast));
        let second = start + Duration::from_secs(1);
        assert_eq!(table.admit(ID, ip, second), Ok(()));
        assert_eq!(table.admit(ID, ip, second), Err(PerIpRefusal::TooFast));
        // A refusal costs nothing: after three quiet seconds, a full burst.
        let quiet = second + Duration::from_secs(3);
        for _ in 0..3 {
            assert_eq!(table.admit(ID, ip, quiet), Ok(()));
        }
        assert_eq!(table.counts().too_fast, 3);
    }

    #[test]
    fn an_entry_leaves_once_it_has_no_client_and_its_bucket_is_full_again() {
        let mut table = limits(None, every_second(2));
        let start = Instant::now();
        let ip = peer("192.0.2.1");
        table.admit(ID, ip, start).expect("admitted");
        table.release(ip, start);
        assert_eq!(table.counts().addresses, 1, "its bucket is not full yet");
        table.prune(start + Duration::from_millis(500));
        assert_eq!(table.counts().addresses, 1);
        table.prune(start + Duration::from_secs(1));
        assert_eq!(table.counts().addresses, 0);
        // Released after its bucket is full: dropped at once.
        table.admit(ID, ip, start).expect("admitted");
        table.release(ip, start + Duration::from_secs(1));
        assert_eq!(table.counts().addresses, 0);
    }

    #[test]
    fn a_flood_from_many_addresses_keeps_the_table_bounded_and_it_shrinks_back() {
        let mut table = limits(Some(1), every_second(1));
        let start = Instant::now();
        for i in 0..10_000u32 {
            let ip = SocketAddr::from((Ipv4Addr::from(0x7f00_0000 + i), 1));
            table
                .admit(ID, ip, start)
                .expect("a new address is admitted");
            assert!(table.counts().addresses <= 1 + 4);
            table.release(ip, start);
        }
        assert_eq!(table.counts().addresses, 4, "resting_max, then forgotten");
        // A forgotten address starts afresh; a remembered one does not.
        let first = SocketAddr::from((Ipv4Addr::from(0x7f00_0000), 1));
        assert_eq!(table.admit(ID, first, start), Err(PerIpRefusal::TooFast));
        let last = SocketAddr::from((Ipv4Addr::from(0x7f00_0000 + 9_999), 1));
        assert_eq!(table.admit(ID, last, start), Ok(()));
        table.release(last, start);
        table.prune(start + Duration::from_secs(1));
        assert_eq!(table.counts().addresses, 0);
        assert!(table.table.capacity() <= SHRINK_FLOOR * SHRINK_RATIO);
    }

    #[test]
    fn the_table_grows_with_clients_past_resting_max_and_shrinks_when_they_go() {
        let mut table = limits(Some(1), every_second(1));
        let start = Instant::now();
        let ips: Vec<SocketAddr> = (0..5_000u32)
            .map(|i| SocketAddr::from((Ipv4Addr::from(0x7f00_0000 + i), 1)))
            .collect();
        for &ip in &ips {
            table.admit(ID, ip, start).expect("admitted");
        }
        assert_eq!(table.counts().addresses, 5_000, "every client is counted");
        let grown = table.table.capacity();
        let later = start + Duration::from_secs(1);
        for &ip in &ips {
            table.release(ip, later);
        }
        table.prune(later);
        assert_eq!(table.counts().addresses, 0);
        assert!(table.table.capacity() < grown / 10);
    }

    /// `RESTING_MAX`'s cost, in docs/operations.md, is stated from this.
    #[test]
    fn an_entry_is_64_bytes() {
        let size = std::mem::size_of::<(AddressKey, Slot)>();
        assert!(size <= 64, "an entry is {size} bytes");
    }

    #[test]
    fn absurd_rates_neither_overflow_nor_divide_by_zero() {
        let start = Instant::now();
        for (rate, burst) in [(1e-300, u32::MAX), (1e300, 1), (f64::MIN_POSITIVE, 7)] {
            let mut table = limits(None, Some(ConnectRate::per_second(rate, burst)));
            for _ in 0..3 {
                let _ = table.admit(ID, peer("192.0.2.1"), start);
            }
            table.release(peer("192.0.2.1"), start);
            table.prune(start);
        }
    }
}
