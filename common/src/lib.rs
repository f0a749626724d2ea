//! What every Papervisor binary shares: the log format, an error and its
//! causes on one line, and clap's command-line errors on one line.
#![deny(missing_docs)]

use std::error::Error;
use std::process::ExitCode;

/// Exit status for a command line that is refused before anything starts.
pub const EXIT_USAGE: u8 = 2;

/// Logs to stderr with the process's name in every line, so that the
/// interleaved logs of the core and its device processes stay readable.
/// `RUST_LOG` sets the level (info when unset).
pub fn init_logging(process: &'static str) {
    use std::io::Write;
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(move |out, record| {
            writeln!(
                out,
                "[{} {:5} {process}] {}",
                out.timestamp_millis(),
                record.level(),
                record.args()
            )
        })
        .init();
}

/// One line: the error and each of its causes.
pub fn describe(error: &dyn Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}

/// Parses the command line with clap. `--help` and `--version` print and
/// exit 0; a bad command line prints one line, `<program>: <what is
/// wrong>`, and exits [`EXIT_USAGE`].
pub fn parse_cli<T: clap::Parser>(program: &str) -> Result<T, ExitCode> {
    match T::try_parse() {
        Ok(cli) => Ok(cli),
        Err(error) if !error.use_stderr() => {
            let _ = error.print();
            Err(ExitCode::SUCCESS)
        }
        Err(error) => {
            eprintln!("{program}: {}", one_line(&error.render().to_string()));
            Err(ExitCode::from(EXIT_USAGE))
        }
    }
}

/// clap's message spans lines and adds the usage; keep its sentence.
fn one_line(rendered: &str) -> String {
    let first = rendered
        .lines()
        .take_while(|line| !line.is_empty() && !line.starts_with("Usage:"))
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ");
    first.trim_start_matches("error: ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_errors_become_one_sentence() {
        let rendered = "error: invalid value 'x' for '--smp <SMP>': bad\n  tip: more\n\nUsage: papervisor [OPTIONS]\n";
        assert_eq!(
            one_line(rendered),
            "invalid value 'x' for '--smp <SMP>': bad tip: more"
        );
    }

    #[test]
    fn causes_are_chained() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("cannot start")
            }
        }
        impl Error for Outer {
            fn source(&self) -> Option<&(dyn Error + 'static)> {
                Some(&self.0)
            }
        }
        let error = Outer(std::io::Error::other("no such file"));
        assert_eq!(describe(&error), "cannot start: no such file");
    }
}
