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
        // How many more bytes are surely the header's, and whether to look
        // for a v1 header's end among the bytes that have come.
        let (wanted, v1) = match header.first() {
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
        if wanted == 0 {
            return parse(&header);
        }
        let wanted = wanted.min(chunk.len());
        let n = if v1 {
            // Peek, and take up to the newline (or all, if none came yet).
            let seen = socket
                .read_with(|tcp| tcp.peek(&mut chunk[..wanted]))
                .await?;
            let end = chunk[..seen]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(seen, |i| i + 1);
            socket
                .read_with(|mut tcp| tcp.read(&mut chunk[..end]))
                .await?
        } else {
            socket
                .read_with(|mut tcp| tcp.read(&mut chunk[..wanted]))
                .await?
        };
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before the end of the PROXY header",
            ));
        }
        header.extend_from_slice(&chunk[..n]);
        if header
            .first()
            .is_some_and(|&b| b != b'P' && b != V2_SIGNATURE[0])
            || (header.first() == Some(&V2_SIGNATURE[0])
                && !V2_SIGNATURE.starts_with(&header[..header.len().min(12)]))
        {
            return Err(invalid("no PROXY header"));
        }
        if v1 && header.last() == Some(&b'\n') {
            return parse(&header);
        }
        if v1 && header.len() >= V1_MAX {
            return Err(invalid("PROXY v1 header too long"));
        }
    }
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
}
