//! Unix signals, turned into actor messages: SIGINT and SIGTERM start a clean
//! shutdown (a second one exits at once), SIGUSR1 asks the registry to log a
//! snapshot.
//!
//! A thread of its own (`duplex-signals`) waits in signal-hook's blocking
//! iterator, so this part of the binary needs no async runtime: firing the
//! shutdown trigger and asking the registry for a snapshot never wait.

use std::io;

use duplex::server::RegistryHandle;
use duplex::shutdown::ShutdownTrigger;
use kv_log_macro::{info, warn};
use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;

/// Exit code after a second interrupt, as shells report death by SIGINT.
const FORCED_EXIT_CODE: i32 = 130;

/// Starts listening for signals; `registry` gets SIGUSR1 (server role only).
pub(crate) fn install(
    trigger: ShutdownTrigger,
    registry: Option<RegistryHandle>,
) -> io::Result<()> {
    let mut wanted = vec![SIGINT, SIGTERM];
    if registry.is_some() {
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
                        if let Some(registry) = &registry {
                            if !registry.log_snapshot() {
                                warn!("snapshot request dropped: registry busy");
                            }
                        }
                    }
                    _ if triggered => {
                        warn!("second signal: exiting now", { signal: signal });
                        std::process::exit(FORCED_EXIT_CODE);
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
