//! Unix signals, turned into actor messages: SIGINT and SIGTERM start a clean
//! shutdown (a second one exits at once), SIGUSR1 asks the registry to log a
//! snapshot, SIGHUP reloads a TLS server's certificate (every other role logs
//! that it has nothing to reload: a SIGHUP never kills the process, which
//! systemd would count as a clean exit and not restart).
//!
//! A thread of its own (`duplex-signals`) waits in signal-hook's blocking
//! iterator, so this part of the binary needs no async runtime: firing the
//! shutdown trigger and asking the registry for a snapshot never wait.

use std::io;

use duplex::server::{RegistryHandle, TlsReloader};
use duplex::shutdown::ShutdownTrigger;
use kv_log_macro::{info, warn};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;

/// Exit code after a second interrupt, as shells report death by SIGINT.
const FORCED_EXIT_CODE: i32 = 130;

/// What the server's own signals reach.
pub(crate) struct ServerSignals {
    /// Gets SIGUSR1.
    pub(crate) registry: RegistryHandle,
    /// Gets SIGHUP, when the server speaks TLS.
    pub(crate) tls: Option<TlsReloader>,
}

/// Starts listening for signals; `server` gets its own (server role only).
pub(crate) fn install(trigger: ShutdownTrigger, server: Option<ServerSignals>) -> io::Result<()> {
    let mut wanted = vec![SIGINT, SIGTERM, SIGHUP];
    if server.is_some() {
        wanted.push(SIGUSR1);
    }
    let mut signals = Signals::new(wanted)?;
    std::thread::Builder::new()
        .name("duplex-signals".into())
        .spawn(move || {
            let mut triggered = false;
            for signal in signals.forever() {
                match signal {
                    SIGUSR1 => {
                        let registry = server.as_ref().map(|s| &s.registry);
                        if registry.is_some_and(|registry| !registry.log_snapshot()) {
                            warn!("snapshot request dropped: registry busy");
                        }
                    }
                    SIGHUP => match server.as_ref().and_then(|s| s.tls.as_ref()) {
                        Some(tls) => {
                            info!("signal received: reloading the TLS certificate", { signal: signal });
                            // Logged by reload itself; the old certificate stays on failure.
                            let _ = tls.reload();
                        }
                        None => info!("signal received: nothing to reload (only a TLS server reloads)", { signal: signal }),
                    },
                    _ if triggered => {
                        warn!("second signal: exiting now", { signal: signal });
                        duplex::logging::exit_now(FORCED_EXIT_CODE);
                    }
                    _ => {
                        info!("signal received: shutting down", { signal: signal });
                        trigger.trigger();
                        triggered = true;
                    }
                }
            }
        })?;
    Ok(())
}
