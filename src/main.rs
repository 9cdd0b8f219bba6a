//! The `duplex` binary: parse the command line, start logging, run the chosen
//! role from the library, turn the outcome into an exit code.
//!
//! The command line, signals and process limits are the binary's own
//! business, so their modules live here and not in the library.

mod cli;
mod limits;
mod signals;

use std::error::Error;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use cli::{Cli, Role};
use duplex::client::{self, Outcome};
use duplex::server::{Server, StartError};
use duplex::{bench, logging, shutdown};

fn main() -> ExitCode {
    let cli = Cli::parse_or_exit(std::env::args_os());
    let format = cli.log_format;
    let log = logging::init(format);
    let outcome = duplex::block_on(run(cli));
    // Queued log lines first, so that an error is the last line.
    log.finish();
    match outcome {
        Ok(code) => code,
        // In the log's format (a JSON log stays all JSON), and past any
        // RUST_LOG filter: a fatal error is always seen.
        Err(e) => {
            logging::print_error(format, "duplex", &e.to_string());
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, Box<dyn Error + Send + Sync>> {
    let (trigger, shutdown) = shutdown::channel();
    match cli.role {
        Role::Server => {
            let addr = cli.addr();
            limits::return_long_buffers();
            let open_files = limits::raise_open_files();
            let config = cli.server_config();
            limits::check_max_clients(config.registry.max_clients, open_files);
            let server = Server::bind(addr, config).map_err(|e| match e {
                StartError::Listen(e) => format!("cannot listen on {addr}: {e}"),
                e => e.to_string(),
            })?;
            let server_signals = signals::ServerSignals {
                registry: server.registry(),
                tls: server.tls_reloader(),
            };
            signals::install(trigger, Some(server_signals))?;
            server.run(shutdown).await;
            Ok(ExitCode::SUCCESS)
        }
        Role::Client => {
            // Stdout closing (say, piped into `head`) is a reason to stop, not to fail.
            let stdout_closed = trigger.clone();
            let said = std::sync::atomic::AtomicBool::new(false);
            let sink = Arc::new(move |line: &[u8]| {
                let mut out = std::io::stdout().lock();
                let written = out.write_all(line).and_then(|()| out.write_all(b"\n"));
                if let Err(e) = written.and_then(|()| out.flush()) {
                    if !said.swap(true, std::sync::atomic::Ordering::Relaxed) {
                        kv_log_macro::info!("stdout closed: stopping", {
                            error: log::kv::Value::from_display(&e),
                        });
                    }
                    stdout_closed.trigger();
                }
            });
            signals::install(trigger, None)?;
            let config = cli.client_config()?;
            let addr = config.connection.addr.clone();
            let summary = client::run(config, shutdown, sink).await;
            match summary.outcome {
                Outcome::ServerSpeaksTls => {
                    Err(format!("the server at {addr} speaks TLS; use --tls").into())
                }
                Outcome::GaveUp => Ok(ExitCode::FAILURE),
                Outcome::CountReached | Outcome::Shutdown => Ok(ExitCode::SUCCESS),
            }
        }
        Role::Bench => {
            let _ = limits::raise_open_files();
            signals::install(trigger, None)?;
            let report = bench::run(cli.bench_config()?, shutdown).await?;
            if cli.json {
                println!("{}", report.to_json());
            } else {
                println!("{report}");
            }
            // Errors are in the report; the exit code makes them visible to scripts.
            Ok(if report.errors() == 0 && report.connected > 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
