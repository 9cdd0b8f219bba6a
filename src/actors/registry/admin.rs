//! The registry's answers to the admin server (`--admin-addr`): its counts
//! for `/metrics` and `/readyz`, a page of the client list, one client, and
//! an operator's close.
//!
//! A page is cut inside the registry, so a request for 100 clients of
//! 10 000 builds 100 [`ClientInfo`]s, not 10 000: only the ids are sorted.

use kv_log_macro::info;
use log::kv::Value;

use super::Registry;
use crate::messages::{
    AdminRequest, ClientId, ClientInfo, ClientPage, OperatorClose, RegistryStats, SessionCommand,
};

impl Registry {
    /// Answers one admin request.
    pub(super) fn answer(&mut self, request: AdminRequest) {
        // In every arm: an admin connection that went away needs no answer.
        match request {
            AdminRequest::Stats { respond_to } => {
                let _ = respond_to.send(self.stats());
            }
            AdminRequest::Page {
                offset,
                limit,
                respond_to,
            } => {
                let _ = respond_to.send(self.page(offset, limit));
            }
            AdminRequest::Client { id, respond_to } => {
                let _ = respond_to.send(self.client(id));
            }
            AdminRequest::Close { id, respond_to } => {
                let _ = respond_to.send(self.close_by_operator(id));
            }
        }
    }

    /// The counts, summed over the table now.
    pub(super) fn stats(&self) -> RegistryStats {
        let summary = self.summary();
        RegistryStats {
            clients: summary.clients,
            connections: self.clients.len(),
            max_clients: self.config.max_clients,
            admitted: summary.admitted,
            rejected: summary.rejected,
            tls_failed: summary.tls_failed,
            proxy_failed: summary.proxy_failed,
            proxy_local: summary.proxy_local,
            tls_on_plain: summary.tls_on_plain,
            totals: summary.totals,
            cuts: self.cuts,
            per_ip: summary.per_ip,
        }
    }

    /// Clients `offset..offset + limit` in id order.
    fn page(&self, offset: usize, limit: usize) -> ClientPage {
        let mut ids: Vec<ClientId> = (self.clients.iter())
            .filter(|(_, entry)| entry.announced)
            .map(|(&id, _)| id)
            .collect();
        let total = ids.len();
        let end = offset.saturating_add(limit).min(total);
        if offset >= end {
            return ClientPage {
                total,
                clients: Vec::new(),
            };
        }
        // Only what the page needs is put in order: the first `end` ids.
        if end < total {
            ids.select_nth_unstable(end);
            ids.truncate(end);
        }
        ids.sort_unstable();
        let clients = ids[offset..].iter().filter_map(|&id| self.client(id));
        ClientPage {
            total,
            clients: clients.collect(),
        }
    }

    /// One client, if connected (announced).
    fn client(&self, id: ClientId) -> Option<ClientInfo> {
        let entry = self.clients.get(&id).filter(|entry| entry.announced)?;
        Some(ClientInfo {
            id,
            peer: entry.peer,
            via: entry.via.as_deref().copied(),
            connected_for: entry.connected_at.elapsed(),
            counts: entry.link.stats.counts(),
        })
    }

    /// Tells client `id`'s session to close, with `error: closed by
    /// operator`, and logs it.
    fn close_by_operator(&mut self, id: ClientId) -> OperatorClose {
        let Some(entry) = self.clients.get_mut(&id).filter(|entry| entry.announced) else {
            return OperatorClose::NotFound;
        };
        // A taken slot (an idle close on its way) or a closed inbox (the
        // drain): the session is leaving already.
        if entry.closing_idle || !entry.link.inbox.post(SessionCommand::CloseByOperator) {
            return OperatorClose::AlreadyClosing;
        }
        entry.closing_idle = true;
        info!("closing client: asked by operator", {
            client_id: id,
            peer: Value::from_display(&entry.peer),
        });
        OperatorClose::Closing
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use futures::channel::oneshot;

    use super::*;
    use crate::actors::registry::RegistryConfig;
    use crate::messages::{LeaveReason, RegistryMsg, SessionLink};

    fn registry() -> Registry {
        Registry {
            config: RegistryConfig {
                max_clients: 20_000,
                snapshot_interval: None,
                idle_timeout: None,
                ..RegistryConfig::default()
            },
            ..Registry::default()
        }
    }

    fn join(registry: &mut Registry, id: u64) -> Arc<SessionLink> {
        let link = Arc::new(SessionLink::default());
        let (respond_to, _answer) = oneshot::channel();
        registry.handle(RegistryMsg::Register {
            id: ClientId(id),
            peer: SocketAddr::from(([127, 0, 0, 1], 1 + (id % 60_000) as u16)),
            link: link.clone(),
            awaits_header: false,
            respond_to,
        });
        link
    }

    #[test]
    fn a_page_of_ten_thousand_clients_holds_what_was_asked_in_id_order() {
        let mut registry = registry();
        // Joined out of order, as ids are not hashed in order either.
        for id in (1..=10_000).rev() {
            join(&mut registry, id);
        }
        let page = registry.page(9_950, 100);
        assert_eq!(page.total, 10_000);
        let ids: Vec<u64> = page.clients.iter().map(|c| c.id.0).collect();
        assert_eq!(ids, (9_951..=10_000).collect::<Vec<_>>());
        let first = registry.page(0, 3);
        assert_eq!(
            first.clients.iter().map(|c| c.id.0).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert!(registry.page(10_000, 5).clients.is_empty());
        assert!(registry.page(usize::MAX, usize::MAX).clients.is_empty());
    }

    #[test]
    fn an_operator_close_tells_the_session_once_and_is_counted_as_a_cut() {
        let mut registry = registry();
        let link = join(&mut registry, 1);
        assert_eq!(
            registry.close_by_operator(ClientId(1)),
            OperatorClose::Closing
        );
        assert!(matches!(
            link.inbox.try_recv(),
            Some(Some(SessionCommand::CloseByOperator))
        ));
        assert_eq!(
            registry.close_by_operator(ClientId(1)),
            OperatorClose::AlreadyClosing
        );
        assert_eq!(
            registry.close_by_operator(ClientId(2)),
            OperatorClose::NotFound
        );
        registry.handle(RegistryMsg::Unregister {
            id: ClientId(1),
            reason: LeaveReason::Operator { told: true },
        });
        let stats = registry.stats();
        assert_eq!((stats.clients, stats.cuts.operator), (0, 1));
        assert_eq!(registry.client(ClientId(1)), None);
    }
}
