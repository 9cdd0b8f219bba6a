//! Telling TLS from plain text by a connection's first bytes, for the side
//! that does not speak TLS: a plain server sees a TLS client's ClientHello,
//! a plain client sees a TLS server's record (an alert, as a rule, once it
//! has sent plain text). Each looks at the first bytes of a connection only:
//! later, the same bytes are a binary message like any other.

/// The content type of a TLS handshake record, the first byte of every TLS
/// client's connection.
pub(super) const HANDSHAKE_RECORD: u8 = 0x16;

/// TLS content types a peer can send first: change_cipher_spec (0x14),
/// alert (0x15), handshake (0x16), application_data (0x17).
const RECORD_TYPES: std::ops::RangeInclusive<u8> = 0x14..=0x17;

/// The handshake message every TLS client starts with.
const CLIENT_HELLO: u8 = 0x01;

/// A record's header: content type, version (2), length (2).
const RECORD_HEADER: usize = 5;

/// Longest record a peer may send: 2^14 bytes of plaintext and 2 KiB of
/// encryption's overhead (RFC 8446, 5.2; RFC 5246, 6.2.3).
const RECORD_MAX: u16 = (1 << 14) + 2048;

/// Whether `bytes` start with a TLS record header: a content type, a 3.x
/// version (SSL 3.0 to TLS 1.3's 3.4) and a length a record can have.
pub(crate) fn is_tls_record(bytes: &[u8]) -> bool {
    let [kind, major, minor, high, low, ..] = *bytes else {
        return false;
    };
    let length = u16::from_be_bytes([high, low]);
    RECORD_TYPES.contains(&kind) && major == 3 && minor <= 4 && (1..=RECORD_MAX).contains(&length)
}

/// Whether `bytes` start as a TLS client starts a connection: a handshake
/// record whose message is a ClientHello. Six bytes decide; fewer are no
/// ClientHello (a TLS client sends its hello in one write).
pub(crate) fn is_client_hello(bytes: &[u8]) -> bool {
    bytes.first() == Some(&HANDSHAKE_RECORD)
        && is_tls_record(bytes)
        && bytes.get(RECORD_HEADER) == Some(&CLIENT_HELLO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_hello_is_told_from_text_and_from_short_or_odd_binary() {
        // The start of a ClientHello as rustls and OpenSSL send it.
        let hello = [
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ];
        assert!(is_client_hello(&hello));
        assert!(is_client_hello(&hello[..6]));
        assert!(!is_client_hello(&hello[..5]), "six bytes decide");
        for not_hello in [
            &b"9c3a51e0f2b7d\n"[..],
            b"GET / HTTP/1.1\r\n",
            &[0x16, 0x03, 0x01, 0x00, 0x05, 0x02, 0x00], // a ServerHello
            &[0x16, 0x03, 0x05, 0x00, 0x05, 0x01, 0x00], // no such version
            &[0x16, 0x02, 0x01, 0x00, 0x05, 0x01, 0x00], // nor this
            &[0x16, 0x03, 0x01, 0x00, 0x00, 0x01, 0x00], // an empty record
            &[0x16, 0x03, 0x01, 0xff, 0xff, 0x01, 0x00], // longer than any
        ] {
            assert!(!is_client_hello(not_hello), "{not_hello:?}");
        }
    }

    #[test]
    fn a_servers_alert_or_handshake_is_a_record_and_a_line_is_not() {
        // rustls's protocol_version alert, and the start of a ServerHello.
        assert!(is_tls_record(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x46]));
        assert!(is_tls_record(&[0x16, 0x03, 0x03, 0x00, 0x7a, 0x02]));
        assert!(!is_tls_record(b"Hello\n"));
        assert!(!is_tls_record(b"error: this server speaks TLS\n"));
        assert!(
            !is_tls_record(&[0x15, 0x03, 0x03, 0x00]),
            "a header is five bytes"
        );
        assert!(!is_tls_record(&[0x18, 0x03, 0x03, 0x00, 0x02]));
    }
}
