//! `--source-addrs`: the local addresses the bench connects from, round
//! robin, so it can open more connections to one server than one address
//! has ephemeral ports (about 28 000 on Linux's default range).
//!
//! Each connection binds its socket to `ip:0` before it connects, with
//! `IP_BIND_ADDRESS_NO_PORT`: the kernel then picks the port at connect
//! time, for the whole four-tuple, instead of at bind time from the ports
//! no other socket on that address holds. So every source address carries
//! its own range of ports.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use socket2::Socket as RawSocket;

use crate::rt::Socket;

/// Most addresses `--source-addrs` takes: each adds about 28 000
/// connections, so this is far more than any machine holds, and a typo'd
/// range (`10.0.0.1-10.9.0.1`) is an error instead of a huge list.
const MAX_SOURCE_ADDRS: u32 = 4096;

/// The local addresses to connect from, in the order connections take them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceAddrs(Vec<IpAddr>);

impl SourceAddrs {
    /// Parses a comma-separated list of addresses (IPv4 or IPv6) and IPv4
    /// ranges, `first-last` inclusive: `127.0.0.1-127.0.0.8,::1`.
    pub fn parse(list: &str) -> Result<SourceAddrs, String> {
        let mut addrs = Vec::new();
        for item in list.split(',').map(str::trim) {
            let (first, last) = match item.split_once('-') {
                Some((first, last)) => (range_end(first)?, range_end(last)?),
                None => {
                    let ip = item.parse::<IpAddr>().map_err(|_| {
                        format!("{item:?} is not an address or a range (127.0.0.1-127.0.0.8)")
                    })?;
                    addrs.push(ip);
                    continue;
                }
            };
            let (first, last) = (u32::from(first), u32::from(last));
            if first > last {
                return Err(format!("{item:?}: the range ends before it starts"));
            }
            if last - first >= MAX_SOURCE_ADDRS {
                return Err(format!(
                    "{item:?}: more than {MAX_SOURCE_ADDRS} addresses in one range"
                ));
            }
            addrs.extend((first..=last).map(|ip| IpAddr::V4(Ipv4Addr::from(ip))));
        }
        if addrs.len() > MAX_SOURCE_ADDRS as usize {
            return Err(format!("more than {MAX_SOURCE_ADDRS} addresses"));
        }
        Ok(SourceAddrs(addrs))
    }

    /// The addresses, in order.
    pub fn addrs(&self) -> &[IpAddr] {
        &self.0
    }

    /// The address connection `id` binds to.
    pub(super) fn for_connection(&self, id: usize) -> Option<IpAddr> {
        (!self.0.is_empty()).then(|| self.0[id % self.0.len()])
    }

    /// An address of another family than `dest`'s, which cannot reach it.
    pub(super) fn mismatch(&self, dest: SocketAddr) -> Option<IpAddr> {
        (self.0.iter().copied()).find(|ip| ip.is_ipv4() != dest.is_ipv4())
    }
}

fn range_end(text: &str) -> Result<Ipv4Addr, String> {
    text.trim().parse::<Ipv4Addr>().map_err(|_| {
        format!("{text:?} is not an IPv4 address (ranges are IPv4 only: 127.0.0.1-127.0.0.8)")
    })
}

/// Connects to `dest` from `source` (the port left to the kernel).
pub(super) async fn connect_from(dest: SocketAddr, source: IpAddr) -> io::Result<Socket> {
    let in_words = |what: &str, e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
    Socket::connect_with(dest, |socket| {
        bind_address_no_port(socket)?;
        let bind = SocketAddr::new(source, 0);
        (socket.bind(&bind.into())).map_err(|e| in_words(&format!("bind {source}"), e))
    })
    .await
}

/// Leaves the port to `connect` (Linux 4.2 and later; elsewhere the port
/// is picked at bind, and each address still has its own).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn bind_address_no_port(socket: &RawSocket) -> io::Result<()> {
    crate::net::set_int_option(socket, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn bind_address_no_port(_socket: &RawSocket) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_ranges_parse_and_bad_ones_say_why() {
        let parsed = SourceAddrs::parse("127.0.0.1-127.0.0.3, ::1,10.0.0.9").expect("valid");
        let text: Vec<String> = parsed.addrs().iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            ["127.0.0.1", "127.0.0.2", "127.0.0.3", "::1", "10.0.0.9"]
        );
        assert_eq!(
            parsed.for_connection(6),
            Some("127.0.0.2".parse().expect("ip"))
        );
        let one = SourceAddrs::parse("127.0.0.5-127.0.0.5").expect("valid");
        assert_eq!(one.addrs().len(), 1);
        for (bad, says) in [
            ("", "not an address"),
            ("127.0.0.1,", "not an address"),
            ("localhost", "not an address"),
            ("127.0.0.1:80", "not an address"),
            ("127.0.0.8-127.0.0.1", "ends before it starts"),
            ("::1-::2", "IPv4 only"),
            ("127.0.0.1-", "IPv4 only"),
            ("10.0.0.0-10.255.255.255", "more than 4096"),
        ] {
            let error = SourceAddrs::parse(bad).expect_err(bad);
            assert!(error.contains(says), "{bad:?}: {error}");
        }
    }

    #[test]
    fn a_source_of_the_other_family_is_named() {
        let both = SourceAddrs::parse("127.0.0.1,::1").expect("valid");
        let v4: SocketAddr = "127.0.0.1:8000".parse().expect("addr");
        assert_eq!(both.mismatch(v4), Some("::1".parse().expect("ip")));
        let v4_only = SourceAddrs::parse("127.0.0.1").expect("valid");
        assert_eq!(v4_only.mismatch(v4), None);
    }

    #[async_std::test]
    async fn a_connection_comes_from_the_address_it_was_given() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let dest = listener.local_addr().expect("bound");
        let source: IpAddr = "127.0.0.2".parse().expect("ip");
        let socket = connect_from(dest, source).await.expect("connects");
        let local = socket.get_ref().local_addr().expect("bound");
        assert_eq!(local.ip(), source);
        assert_ne!(local.port(), 0);
        let (_, peer) = listener.accept().expect("accepted");
        assert_eq!(peer, local);
        // An address this machine does not have is a bind error, named.
        let foreign: IpAddr = "192.0.2.1".parse().expect("ip");
        let error = connect_from(dest, foreign).await.expect_err("not local");
        assert!(error.to_string().starts_with("bind 192.0.2.1: "), "{error}");
    }
}
