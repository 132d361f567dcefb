//! Service configuration: flags, each also settable by an environment variable, and a YAML
//! file of flag values (`--config FILE`). A value given as a flag wins over one from the
//! environment, which wins over one from the file; the defaults come last. The file's keys
//! are the flags' names (`max_running_jobs` or `max-running-jobs`); an unknown key, a key
//! given a list or a mapping, or a value the flag refuses stops start-up with the file named.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{ArgAction, CommandFactory, Parser};
use serde_yaml::Value;

/// Why the configuration was refused.
#[derive(Debug)]
pub enum ConfigError {
    /// From clap: a bad flag or value, or `--help` / `--version`.
    Flags(clap::Error),
    /// The config file is unreadable or holds something no flag takes.
    File(String),
}

impl ConfigError {
    /// Prints the error (or help) and exits as clap does: 0 for help, 2 otherwise.
    pub fn exit(self) -> ! {
        match self {
            ConfigError::Flags(e) => e.exit(),
            ConfigError::File(message) => {
                eprintln!("error: {message}");
                std::process::exit(2)
            }
        }
    }
}

/// What `--check-config` prints: the settings a service would start with, as a config file
/// holding them (keys are the flag names), so an operator or a deployment check sees what the
/// flags, environment and file add up to. Object-store credentials are not settings (each
/// store reads its own variables), so none can appear here.
/// Unset optional settings (which take their documented default) are left out.
pub fn settings_yaml<T: serde::Serialize>(settings: &T) -> String {
    let shown = serde_yaml::to_value(settings).map(|v| match v {
        Value::Mapping(m) => Value::Mapping(m.into_iter().filter(|(_, v)| !v.is_null()).collect()),
        other => other,
    });
    shown
        .and_then(|v| serde_yaml::to_string(&v))
        .unwrap_or_else(|e| format!("# cannot show the settings: {e}\n"))
}

/// Parses this process's command line into `P`, with values from the config file named by
/// `--config` or the environment variable `config_env`.
pub fn parse<P: Parser + CommandFactory>(config_env: &str) -> Result<P, ConfigError> {
    parse_from(std::env::args_os().collect(), config_env)
}

/// [`parse`] for a given command line (the program name first).
pub fn parse_from<P: Parser + CommandFactory>(
    argv: Vec<OsString>,
    config_env: &str,
) -> Result<P, ConfigError> {
    let Some(file) = config_file(&argv, config_env) else {
        return P::try_parse_from(argv).map_err(ConfigError::Flags);
    };
    let injected = file_flags::<P>(&file, &argv)?;
    let mut all = Vec::with_capacity(argv.len() + injected.len());
    let mut rest = argv.into_iter();
    all.extend(rest.next());
    all.extend(injected.into_iter().map(OsString::from));
    all.extend(rest);
    P::try_parse_from(all).map_err(|e| match e.kind() {
        clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
            ConfigError::Flags(e)
        }
        _ => ConfigError::File(format!(
            "{} (flags, environment variables or the config file {})",
            e.render()
                .to_string()
                .trim_end()
                .trim_start_matches("error: "),
            file.display()
        )),
    })
}

fn config_file(argv: &[OsString], config_env: &str) -> Option<PathBuf> {
    let mut args = argv.iter().skip(1);
    while let Some(a) = args.next() {
        let a = a.to_string_lossy();
        if a == "--config" {
            return args.next().map(PathBuf::from);
        }
        if let Some(v) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(v));
        }
    }
    std::env::var_os(config_env)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The file's values as `--flag=value` arguments, skipping flags given on the command line or
/// whose environment variable is set (both win over the file).
fn file_flags<P: CommandFactory>(
    file: &Path,
    argv: &[OsString],
) -> Result<Vec<String>, ConfigError> {
    let refuse =
        |what: String| ConfigError::File(format!("config file {}: {what}", file.display()));
    let text = std::fs::read_to_string(file).map_err(|e| refuse(format!("cannot read it: {e}")))?;
    let value: Value =
        serde_yaml::from_str(&text).map_err(|e| refuse(format!("not valid YAML: {e}")))?;
    let map = match value {
        Value::Mapping(map) => map,
        Value::Null => return Ok(Vec::new()),
        _ => return Err(refuse("expected a mapping of flag names to values".into())),
    };
    let command = P::command();
    let settable: Vec<&clap::Arg> = command
        .get_arguments()
        .filter(|a| a.get_long().is_some() && a.get_id() != "config" && !a.is_hide_set())
        .filter(|a| !matches!(a.get_action(), ArgAction::Help | ArgAction::Version))
        .collect();
    let mut out = Vec::new();
    for (key, value) in map {
        let Value::String(key) = key else {
            return Err(refuse(format!("key {key:?} is not a name")));
        };
        let id = key.replace('-', "_");
        let Some(arg) = settable.iter().find(|a| a.get_id() == id.as_str()) else {
            let known: Vec<String> = settable.iter().map(|a| a.get_id().to_string()).collect();
            return Err(refuse(format!(
                "unknown key '{key}'; known keys: {}",
                known.join(", ")
            )));
        };
        let long = arg.get_long().expect("settable flags have a long name");
        let on_command_line = argv.iter().skip(1).any(|a| {
            let a = a.to_string_lossy();
            a == format!("--{long}") || a.starts_with(&format!("--{long}="))
        });
        let in_environment = arg
            .get_env()
            .is_some_and(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()));
        if on_command_line || in_environment {
            continue;
        }
        let text = match &value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => {
                return Err(refuse(format!(
                    "{key}: expected a single value (a string, number or boolean)"
                )));
            }
        };
        if matches!(arg.get_action(), ArgAction::SetTrue) {
            match value {
                Value::Bool(true) => out.push(format!("--{long}")),
                Value::Bool(false) => {}
                _ => {
                    return Err(refuse(format!(
                        "{key}: expected true or false, found '{text}'"
                    )));
                }
            }
        } else {
            out.push(format!("--{long}={text}"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Parser)]
    struct Args {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, default_value_t = 4, env = "ALMANAC_CONFIG_TEST_JOBS")]
        max_running_jobs: usize,
        #[arg(long, default_value = "127.0.0.1:1")]
        bind: String,
        #[arg(long)]
        quiet: bool,
    }

    fn parse_with(yaml: &str, flags: &[&str]) -> Result<Args, String> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.yaml");
        std::fs::write(&file, yaml).unwrap();
        let mut argv: Vec<OsString> = vec!["svc".into(), "--config".into(), file.clone().into()];
        argv.extend(flags.iter().map(OsString::from));
        parse_from::<Args>(argv, "ALMANAC_CONFIG_TEST_FILE").map_err(|e| match e {
            ConfigError::Flags(e) => e.to_string(),
            ConfigError::File(m) => m,
        })
    }

    #[test]
    fn the_file_sets_flags_and_flags_win() {
        let a = parse_with("max-running-jobs: 7\nbind: 0.0.0.0:9\nquiet: true\n", &[]).unwrap();
        assert_eq!(
            (a.max_running_jobs, a.bind.as_str(), a.quiet),
            (7, "0.0.0.0:9", true)
        );
        let a = parse_with("max_running_jobs: 7\n", &["--max-running-jobs", "2"]).unwrap();
        assert_eq!(a.max_running_jobs, 2);
        let a = parse_with("", &[]).unwrap();
        assert_eq!(a.max_running_jobs, 4);
    }

    #[test]
    fn bad_files_are_refused_naming_the_file_and_key() {
        let e = parse_with("max_runing_jobs: 7\n", &[]).unwrap_err();
        assert!(
            e.contains("unknown key 'max_runing_jobs'") && e.contains("max_running_jobs"),
            "{e}"
        );
        let e = parse_with("max_running_jobs: lots\n", &[]).unwrap_err();
        assert!(e.contains("lots") && e.contains("config file"), "{e}");
        let e = parse_with("bind: [a, b]\n", &[]).unwrap_err();
        assert!(e.contains("bind: expected a single value"), "{e}");
        let e = parse_with("quiet: sometimes\n", &[]).unwrap_err();
        assert!(e.contains("quiet: expected true or false"), "{e}");
        let e = parse_with("- a\n", &[]).unwrap_err();
        assert!(e.contains("expected a mapping"), "{e}");
        let e = parse_from::<Args>(
            vec![
                "svc".into(),
                "--config".into(),
                "/nonexistent/almanac.yaml".into(),
            ],
            "X",
        )
        .map_err(|e| match e {
            ConfigError::File(m) => m,
            ConfigError::Flags(e) => e.to_string(),
        })
        .unwrap_err();
        assert!(
            e.contains("/nonexistent/almanac.yaml: cannot read it"),
            "{e}"
        );
    }
}
