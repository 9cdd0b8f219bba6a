//! The registry's handle: the one way in, for the acceptor, the sessions,
//! the server, and a program that runs a server. Each method is one
//! [`RegistryMsg`]; the asking ones wait for the answer.

use std::net::SocketAddr;
use std::sync::Arc;

use futures::channel::oneshot;

use crate::messages::{
    AdminRequest, Admission, ClientId, LeaveReason, RegistryMsg, SessionLink, Snapshot,
};
use crate::rt::Sender;

/// The way into a server's registry, for the acceptor, the sessions, the
/// server, and a program that runs a [`Server`](crate::server::Server).
#[derive(Clone, Debug)]
pub struct RegistryHandle {
    pub(super) inbox: Sender<RegistryMsg>,
}

/// The registry's task ends only after [`RegistryHandle::stop`], which the
/// server sends last; a handle used after that is a bug in the shutdown order.
const REGISTRY_GONE: &str = "registry actor stopped before its last user";

impl RegistryHandle {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> RegistryMsg) -> T {
        let (respond_to, response) = oneshot::channel();
        self.inbox
            .send(make(respond_to))
            .await
            .expect(REGISTRY_GONE);
        response.await.expect(REGISTRY_GONE)
    }

    /// Asks to admit a new client.
    pub(crate) async fn register(
        &self,
        id: ClientId,
        peer: SocketAddr,
        link: Arc<SessionLink>,
        awaits_header: bool,
    ) -> Admission {
        self.ask(|respond_to| RegistryMsg::Register {
            id,
            peer,
            link,
            awaits_header,
            respond_to,
        })
        .await
    }

    /// Reports the client a PROXY header named; the answer says whether
    /// its address is within the per-address limits.
    pub(crate) async fn identify(&self, id: ClientId, client: SocketAddr) -> Admission {
        self.ask(|respond_to| RegistryMsg::Identify {
            id,
            client,
            respond_to,
        })
        .await
    }

    /// Reports that a session ended.
    pub(crate) async fn unregister(&self, id: ClientId, reason: LeaveReason) {
        // A session cut at shutdown may report after the registry stopped;
        // its leave is already counted in the final snapshot as a cut.
        let _ = self
            .inbox
            .send(RegistryMsg::Unregister { id, reason })
            .await;
    }

    /// The client list now.
    pub async fn snapshot(&self) -> Snapshot {
        self.ask(|respond_to| RegistryMsg::Snapshot { respond_to })
            .await
    }

    /// Asks the registry to log a snapshot. Never waits for the registry:
    /// when its inbox is full the request is dropped, and `false` returned.
    pub fn log_snapshot(&self) -> bool {
        self.inbox.try_send(RegistryMsg::LogSnapshot).is_ok()
    }

    /// Starts the shutdown of every session (see [`RegistryMsg::Drain`]).
    pub(crate) async fn drain(&self) {
        self.ask(|respond_to| RegistryMsg::Drain { respond_to })
            .await
    }

    /// Completes when exactly `clients` connections are held: the clients,
    /// and any awaiting their PROXY header (the count `--max-clients` caps).
    pub async fn wait_for_clients(&self, clients: usize) {
        self.ask(|respond_to| RegistryMsg::WaitForCount {
            clients,
            respond_to,
        })
        .await
    }

    /// Asks an admin question; `None` once the registry has stopped (an
    /// admin request can outlive the server's shutdown order).
    pub(crate) async fn admin<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> AdminRequest,
    ) -> Option<T> {
        let (respond_to, response) = oneshot::channel();
        let request = RegistryMsg::Admin(make(respond_to));
        self.inbox.send(request).await.ok()?;
        response.await.ok()
    }

    /// Logs a final snapshot, returns it, and stops the actor.
    pub(crate) async fn stop(&self) -> Snapshot {
        self.ask(|respond_to| RegistryMsg::Stop { respond_to })
            .await
    }
}
