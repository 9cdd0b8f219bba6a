//! The PROXY protocol (HAProxy's specification, versions 1 and 2): who may
//! send a header, and reading one off a connection without taking a byte
//! that comes after it. Parsing is the `ppp` crate's.
//!
//! The spec forbids guessing: with the protocol on, every connection must
//! start with a header, and only from a trusted address.

use std::fmt;
use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use ppp::{HeaderResult, v1, v2};

use crate::rt::Socket;

/// The addresses allowed to send a PROXY header (`--trusted-proxies`);
/// `Default` is loopback: 127.0.0.1/32 and ::1/128.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Parses `CIDR,CIDR,...`; a bare address is a network of one.
    pub fn parse(list: &str) -> Result<TrustedProxies, String> {
        let parse_one = |item: &str| {
            let item = item.trim();
            item.parse::<IpNet>()
                .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    format!("{item:?} is not an address or a CIDR block (10.0.0.0/8, ::1/128)")
                })
        };
        let nets = list
            .split(',')
            .map(parse_one)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TrustedProxies(nets))
    }

    /// Whether `ip` may send a header (an IPv4-mapped IPv6 address counts
    /// as the IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// Whether a network given takes in every address of its family
    /// (`0.0.0.0/0`, `::/0`): then any host can send a header, and so pose
    /// as any client.
    pub fn trusts_anyone(&self) -> bool {
        self.0.iter().any(|net| net.prefix_len() == 0)
    }
}

impl Default for TrustedProxies {
    fn default() -> TrustedProxies {
        TrustedProxies::parse("127.0.0.1/32,::1/128").expect("valid CIDRs")
    }
}

impl fmt::Display for TrustedProxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nets: Vec<String> = self.0.iter().map(IpNet::to_string).collect();
        f.write_str(&nets.join(","))
    }
}

/// What a header said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProxyHeader {
    /// The connection is from `client`, relayed by the proxy.
    Relayed { client: SocketAddr },
    /// A client the proxy cannot name (v1 `UNKNOWN`, a v2 UNIX or
    /// unspecified address): served, under the connection's own address.
    Unnamed,
    /// The proxy's own connection (a health check, v2 `LOCAL`): nothing to serve.
    Local,
}

/// The longest v1 header, by the spec.
const V1_MAX: usize = 107;
/// The fixed part of a v2 header: signature, version and command, family,
/// length.
const V2_FIXED: usize = 16;
/// The longest v2 header taken (the spec allows 64 KiB of TLVs; a balancer
/// sends a few dozen bytes of them, if any).
const V2_MAX: usize = V2_FIXED + 2048;
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// Reads a PROXY header from `socket`, taking exactly its bytes: what the
/// client sent after it is still unread. An `Err` of kind `InvalidData`
/// means there is no valid header.
pub(crate) async fn read_header(socket: &Socket) -> io::Result<ProxyHeader> {
    let mut header = Vec::with_capacity(V1_MAX);
    let mut chunk = [0u8; V1_MAX];
    loop {
        let Some(Wanted { bytes: wanted, v1 }) = wanted(&header)? else {
            return parse(&header);
        };
        let wanted = wanted.min(chunk.len());
        let n = if v1 {
            // Peek, and take up to the newline (or all, if none came yet).
            let seen = socket
                .read_with(|tcp| tcp.peek(&mut chunk[..wanted]))
                .await?;
            let end = v1_end(&chunk[..seen]);
            socket
                .read_with(|mut tcp| tcp.read(&mut chunk[..end]))
                .await?
        } else {
            socket
                .read_with(|mut tcp| tcp.read(&mut chunk[..wanted]))
                .await?
        };
        if n == 0 {
            return Err(closed_early());
        }
        header.extend_from_slice(&chunk[..n]);
        if read_more(&header, v1)? {
            return parse(&header);
        }
    }
}

/// The next read of a header: how many more bytes are surely the header's,
/// and whether to look for a v1 header's end among them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Wanted {
    bytes: usize,
    v1: bool,
}

/// What to read next, given the header's bytes so far (`None`: it is
/// whole); an error for a v2 header that says it is too long.
fn wanted(header: &[u8]) -> io::Result<Option<Wanted>> {
    let (bytes, v1) = match header.first() {
        None => (1, false),
        Some(b'P') => (V1_MAX - header.len(), true),
        Some(_) if header.len() < V2_FIXED => (V2_FIXED - header.len(), false),
        Some(_) => {
            let length = u16::from_be_bytes([header[14], header[15]]) as usize;
            if V2_FIXED + length > V2_MAX {
                return Err(invalid("PROXY v2 header too long"));
            }
            (V2_FIXED + length - header.len(), false)
        }
    };
    Ok((bytes > 0).then_some(Wanted { bytes, v1 }))
}

/// How many of the bytes `seen` (peeked) a v1 header takes: up to its
/// newline, or all of them if none came yet.
fn v1_end(seen: &[u8]) -> usize {
    seen.iter()
        .position(|&b| b == b'\n')
        .map_or(seen.len(), |i| i + 1)
}

/// After a read: whether a v1 header is whole, or an error if the bytes so
/// far cannot be (the start of) a header.
fn read_more(header: &[u8], v1: bool) -> io::Result<bool> {
    if header
        .first()
        .is_some_and(|&b| b != b'P' && b != V2_SIGNATURE[0])
        || (header.first() == Some(&V2_SIGNATURE[0])
            && !V2_SIGNATURE.starts_with(&header[..header.len().min(12)]))
    {
        return Err(invalid("no PROXY header"));
    }
    if v1 && header.last() == Some(&b'\n') {
        return Ok(true);
    }
    if v1 && header.len() >= V1_MAX {
        return Err(invalid("PROXY v1 header too long"));
    }
    Ok(false)
}

fn closed_early() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "closed before the end of the PROXY header",
    )
}

fn parse(header: &[u8]) -> io::Result<ProxyHeader> {
    let relayed = |client| Ok(ProxyHeader::Relayed { client });
    // By the first byte, so that a bad v2 header is reported as one.
    let parsed: HeaderResult = match header.first() {
        Some(b'P') => v1::Header::try_from(header).into(),
        _ => v2::Header::try_from(header).into(),
    };
    match parsed {
        HeaderResult::V1(Ok(parsed)) => match parsed.addresses {
            v1::Addresses::Tcp4(a) => relayed(SocketAddr::from((a.source_address, a.source_port))),
            v1::Addresses::Tcp6(a) => relayed(SocketAddr::from((a.source_address, a.source_port))),
            v1::Addresses::Unknown => Ok(ProxyHeader::Unnamed),
        },
        // ppp reads TLVs only when asked: one whose length runs past the
        // header is refused here, as HAProxy does.
        HeaderResult::V2(Ok(parsed)) if parsed.tlvs().any(|tlv| tlv.is_err()) => Err(invalid(
            "invalid PROXY v2 header: a TLV runs past the header's end",
        )),
        HeaderResult::V2(Ok(parsed)) => match (parsed.command, parsed.addresses) {
            (v2::Command::Local, _) => Ok(ProxyHeader::Local),
            (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                relayed(SocketAddr::from((a.source_address, a.source_port)))
            }
            (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                relayed(SocketAddr::from((a.source_address, a.source_port)))
            }
            // A relayed UNIX or unspecified client has no address to show.
            (v2::Command::Proxy, _) => Ok(ProxyHeader::Unnamed),
        },
        HeaderResult::V1(Err(e)) => Err(invalid(format!("invalid PROXY v1 header: {e}"))),
        HeaderResult::V2(Err(e)) => Err(invalid(format!("invalid PROXY v2 header: {e}"))),
    }
}

fn invalid(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_proxies_take_cidrs_and_bare_addresses() {
        let trusted = TrustedProxies::parse("10.0.0.0/8, 192.168.1.7,::1/128").expect("valid");
        assert!(trusted.contains("10.1.2.3".parse().unwrap()));
        assert!(trusted.contains("192.168.1.7".parse().unwrap()));
        assert!(!trusted.contains("192.168.1.8".parse().unwrap()));
        assert!(trusted.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(!trusted.contains("::2".parse().unwrap()));
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse("").is_err());
        assert!(TrustedProxies::default().contains("127.0.0.1".parse().unwrap()));
        assert!(!TrustedProxies::default().trusts_anyone());
        assert!(
            !TrustedProxies::parse("0.0.0.0/1,128.0.0.0/2")
                .unwrap()
                .trusts_anyone()
        );
        for anyone in ["0.0.0.0/0", "10.0.0.0/8,::/0"] {
            assert!(
                TrustedProxies::parse(anyone).unwrap().trusts_anyone(),
                "{anyone}"
            );
        }
    }

    #[test]
    fn headers_of_both_versions_parse() {
        let v1 = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 8000\r\n";
        assert_eq!(
            parse(v1).expect("v1"),
            ProxyHeader::Relayed {
                client: "192.0.2.1:56324".parse().unwrap()
            }
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n").expect("v1"),
            ProxyHeader::Unnamed
        );
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[
            0x21, 0x11, 0, 12, 192, 0, 2, 1, 198, 51, 100, 2, 0xdc, 0x04, 0x1f, 0x40,
        ]);
        assert_eq!(
            parse(&v2).expect("v2"),
            ProxyHeader::Relayed {
                client: "192.0.2.1:56324".parse().unwrap()
            }
        );
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(parse(&local).expect("v2 local"), ProxyHeader::Local);
        assert!(parse(b"PROXY TCP4 nonsense\r\n").is_err());
    }

    #[test]
    fn a_tlv_that_runs_past_the_header_is_refused() {
        let mut v2 = V2_SIGNATURE.to_vec();
        // TCP/IPv4, then a NOOP TLV that says 256 bytes and brings 2.
        v2.extend_from_slice(&[0x21, 0x11, 0, 12 + 3 + 2, 192, 0, 2, 1, 198, 51, 100, 2]);
        v2.extend_from_slice(&[0xdc, 0x04, 0x1f, 0x40, 0x04, 0x01, 0x00, 0, 0]);
        let refused = parse(&v2).expect_err("overrun");
        assert!(refused.to_string().contains("TLV"), "{refused}");
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        /// Reads a header as `read_header` does, from `data` arriving in
        /// the pieces `cuts` makes of it (a read takes at most what has
        /// arrived, and at most a v1 header's end); the result (an error
        /// as its text) and how many bytes it took.
        fn read_in_pieces(data: &[u8], cuts: &[usize]) -> (Result<ProxyHeader, String>, usize) {
            let mut arrivals = cuts.iter().copied().chain([data.len()]);
            let (mut arrived, mut taken) = (0, 0);
            let mut header = Vec::new();
            let result = loop {
                let next = match wanted(&header) {
                    Err(e) => break Err(e),
                    Ok(None) => break parse(&header),
                    Ok(Some(next)) => next,
                };
                if taken == arrived {
                    match arrivals.find(|&at| at > arrived) {
                        Some(at) => arrived = at,
                        None => break Err(closed_early()),
                    }
                }
                let seen = &data[taken..arrived.min(taken + next.bytes.min(V1_MAX))];
                let n = if next.v1 { v1_end(seen) } else { seen.len() };
                header.extend_from_slice(&seen[..n]);
                taken += n;
                assert!(header.len() <= V2_MAX, "a header of {}", header.len());
                match read_more(&header, next.v1) {
                    Err(e) => break Err(e),
                    Ok(true) => break parse(&header),
                    Ok(false) => {}
                }
            };
            (result.map_err(|e| e.to_string()), taken)
        }

        /// A header, valid or nearly: v1, v2 with TLVs, or arbitrary bytes;
        /// some bytes changed at random; arbitrary bytes after it.
        fn streams() -> impl Strategy<Value = Vec<u8>> {
            let v1 = Just(b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 8000\r\n".to_vec());
            let v2 = proptest::collection::vec(any::<u8>(), 0..40).prop_map(|tlv| {
                let mut v2 = V2_SIGNATURE.to_vec();
                let length = (12 + 3 + tlv.len()) as u16;
                v2.extend_from_slice(&[0x21, 0x11]);
                v2.extend_from_slice(&length.to_be_bytes());
                v2.extend_from_slice(&[192, 0, 2, 1, 198, 51, 100, 2, 0xdc, 0x04, 0x1f, 0x40]);
                v2.push(0x04);
                v2.extend_from_slice(&(tlv.len() as u16).to_be_bytes());
                v2.extend_from_slice(&tlv);
                v2
            });
            let start = prop_oneof![v1, v2, proptest::collection::vec(any::<u8>(), 0..300)];
            let changes =
                proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3);
            let tail = proptest::collection::vec(any::<u8>(), 0..200);
            (start, changes, tail).prop_map(|(mut data, changes, tail)| {
                for (at, byte) in changes {
                    if !data.is_empty() {
                        let at = at.index(data.len());
                        data[at] = byte;
                    }
                }
                data.extend_from_slice(&tail);
                data
            })
        }

        proptest! {
            #[test]
            fn any_split_gives_the_result_of_the_whole_stream(
                data in streams(),
                cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..20),
            ) {
                let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(data.len() + 1)).collect();
                cuts.sort_unstable();
                let (whole, taken_whole) = read_in_pieces(&data, &[]);
                let (split, taken_split) = read_in_pieces(&data, &cuts);
                prop_assert_eq!(&split, &whole);
                if whole.is_ok() {
                    // Exactly the header, however it came: the rest is the client's.
                    prop_assert_eq!(taken_split, taken_whole);
                }
            }
        }
    }
}
