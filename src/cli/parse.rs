//! Reading the command line: clap's parse, then the checks clap cannot
//! express (a flag of another role, values that depend on each other or on
//! the machine, a TLS server name), and usage errors as JSON lines when a
//! JSON log was asked for.

use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};

use duplex::client::ClientTls;
use duplex::logging::LogFormat;

use super::{CORES_HEADING, Cli, Role, TLS_HEADING};

/// Whether `args` ask for `--log-format json` (looked at before they parse).
fn wants_json_log(args: &[std::ffi::OsString]) -> bool {
    args.iter().enumerate().any(|(i, arg)| {
        arg == "--log-format=json"
            || (arg == "--log-format" && args.get(i + 1).is_some_and(|v| v == "json"))
    })
}

/// A `RUST_LOG` that would silence the log or be partly ignored is a usage
/// error (`None`: unset, the default `info`).
fn check_log_filter(filter: Option<&str>) -> Result<(), clap::Error> {
    match filter.map(duplex::logging::check_filter) {
        Some(Err(why)) => Err(Cli::command().error(ErrorKind::ValueValidation, why)),
        _ => Ok(()),
    }
}

/// Each role's own flags are listed under a help heading, which is also
/// how a flag given for the wrong role is recognised.
const ROLE_HEADINGS: [(&[Role], &str); 5] = [
    (&[Role::Server], "Server options"),
    (&[Role::Client], "Client options"),
    (&[Role::Bench], "Bench options"),
    (&[Role::Client, Role::Bench], TLS_HEADING),
    (&[Role::Server, Role::Bench], CORES_HEADING),
];

impl Cli {
    /// Parses `args` (program name first); on error or `--help`, prints and
    /// exits (code 2 for errors), as clap does.
    pub(crate) fn parse_or_exit<I, T>(args: I) -> Cli
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
        let filter = std::env::var("RUST_LOG").ok();
        Cli::try_parse_args(&args)
            .and_then(|cli| check_log_filter(filter.as_deref()).map(|()| cli))
            .unwrap_or_else(|e| {
                // Asked for a JSON log, a usage error is a JSON line too.
                if e.use_stderr() && wants_json_log(&args) {
                    let message = e.render().to_string();
                    duplex::logging::print_error(
                        LogFormat::Json,
                        "duplex::cli",
                        message.trim_end(),
                    );
                    std::process::exit(e.exit_code());
                }
                e.exit()
            })
    }

    /// Parses `args`, rejecting flags given for the other role.
    pub(super) fn try_parse_args<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut command = Cli::command();
        let matches = command.try_get_matches_from_mut(args)?;
        let cli = Cli::from_arg_matches(&matches)?;
        let wrong_role = command.get_arguments().find_map(|arg| {
            let heading = arg.get_help_heading()?;
            let (owners, heading) = ROLE_HEADINGS.iter().find(|(_, h)| *h == heading)?;
            let given =
                matches.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine);
            (given && !owners.contains(&cli.role))
                .then(|| (arg.get_long().unwrap_or_default(), *heading))
        });
        if let (Some(max), true) = (cli.backoff_max, cli.role == Role::Client) {
            if max < cli.backoff {
                return Err(command.error(
                    ErrorKind::ValueValidation,
                    "--backoff-max must be at least --backoff",
                ));
            }
        }
        if let (Some(pid), Role::Bench) = (cli.server_pid, cli.role) {
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                return Err(command.error(
                    ErrorKind::ValueValidation,
                    format!("--server-pid {pid}: no such process on this machine"),
                ));
            }
        }
        if let (Some(name), Role::Client | Role::Bench) = (cli.tls_server_name(), cli.role) {
            if let Err(e) = ClientTls::check_server_name(name) {
                let flag = match cli.tls_server_name {
                    Some(_) => "--tls-server-name",
                    None => "--addr (its host, without --tls-server-name)",
                };
                return Err(command.error(ErrorKind::ValueValidation, format!("{flag}: {e}")));
            }
        }
        if let Some((flag, heading)) = wrong_role {
            let options = heading.to_lowercase();
            return Err(command.error(
                ErrorKind::ArgumentConflict,
                format!("--{flag} is one of the {options}; it has no effect with this --role"),
            ));
        }
        Ok(cli)
    }
}
