//! A session's opening, before its greeting: the PROXY header (and the
//! registry's answer on the address it names), then the TLS handshake.

use super::Session;
use super::waits::{handshake, proxy_header, write_or_cut};
use crate::messages::{Admission, HandshakeFailure, LeaveReason};
use crate::net::Handshake;
use crate::proxy::ProxyHeader;
use crate::wire;

impl Session {
    /// The connection's opening: the PROXY header, the TLS handshake, then
    /// the greeting.
    pub(super) async fn open(&mut self) -> Result<(), LeaveReason> {
        // Behind a balancer, the registry counts the header's address.
        let mut refused = None;
        if let Some(trusted) = &self.context.proxy {
            let header = Box::pin(proxy_header(
                &self.socket,
                self.peer,
                trusted,
                &self.context,
                &self.link.inbox,
            ));
            match header.await? {
                ProxyHeader::Relayed { client } => self.peer = client,
                // Served under the balancer's address, which is all there is.
                ProxyHeader::Unnamed => {}
                ProxyHeader::Local => return Err(LeaveReason::ProxyLocal),
            }
            if let Admission::Refused(refusal) =
                self.context.registry.identify(self.id, self.peer).await
            {
                refused = Some(refusal);
            }
        }
        if let Some(tls) = &self.context.tls {
            // Boxed: a handshake's state is kilobytes, and gone once it is done.
            let shaken = Box::pin(handshake(
                &mut self.socket,
                tls,
                &self.context,
                &self.link.inbox,
            ));
            let reason = match shaken.await? {
                Handshake::Done => None,
                Handshake::NotTls => Some("not TLS (plain text on the TLS port)"),
                Handshake::Silent => Some("handshake timed out (nothing sent)"),
            };
            if let Some(reason) = reason {
                // In plain text: a client that is not speaking TLS reads it.
                self.out.extend_from_slice(wire::TLS_REQUIRED_ERROR);
                self.flush().await?;
                Box::pin(self.linger()).await;
                return Err(LeaveReason::TlsFailed(HandshakeFailure {
                    reason,
                    error: None,
                }));
            }
        }
        if let Some(refusal) = refused {
            // After the handshake, so that a TLS client reads it; closed
            // without lingering, as when refused at accept.
            self.out.extend_from_slice(refusal.error_line());
            self.flush().await?;
            return Err(LeaveReason::Refused(refusal));
        }
        // Written directly: an idle client's reply buffer stays unallocated.
        write_or_cut(
            &mut self.socket,
            &self.context,
            &self.link.inbox,
            wire::GREETING,
        )
        .await
    }
}
