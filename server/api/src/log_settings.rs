//! Triton's logging extension: `GET`/`POST /v2/logging` and the gRPC `LogSettings` call read and change what the
//! server logs while it runs (tritonclient's `get_log_settings` / `update_log_settings`).
//!
//! The settings and their names are Triton's: `log_info`, `log_warning`, `log_error`, `log_verbose_level`,
//! `log_file`, `log_format` (the plurals `log_warnings` and `log_errors` of Triton's documented example are taken
//! too). A null value changes nothing, as in Triton. ferroserve filters logs by level, so the switches must nest (info needs warnings,
//! warnings need errors, a verbose level needs info); a combination that does not is refused rather than
//! approximated. `log_verbose_level` 1 adds ferroserve's own debug logs, 2 and up everything's. Logs go to
//! stderr only (`log_file` is `""`), with ISO 8601 timestamps in either `--log-format` (`log_format` is
//! `"ISO8601"`). A change replaces the level filter `RUST_LOG` set at start, per-target directives included.

use std::sync::{Mutex, OnceLock, PoisonError};

use ferroserve_engine::InferError;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// The one log format name this server answers with: both `--log-format text` and `json` stamp ISO 8601 times.
const FORMAT: &str = "ISO8601";

/// Which levels are logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLevels {
    /// `log_info`.
    pub info: bool,
    /// `log_warning`.
    pub warnings: bool,
    /// `log_error`.
    pub errors: bool,
    /// `log_verbose_level`: 0 none, 1 ferroserve's debug logs, 2 and up every crate's.
    pub verbose: u32,
}

impl Default for LogLevels {
    fn default() -> Self {
        LogLevels { info: true, warnings: true, errors: true, verbose: 0 }
    }
}

impl LogLevels {
    /// The levels a filter set at start lets through, from the most verbose level it enables anywhere.
    fn of(hint: Option<LevelFilter>) -> Self {
        let on = |info, warnings, errors, verbose| LogLevels { info, warnings, errors, verbose };
        match hint {
            Some(LevelFilter::OFF) => on(false, false, false, 0),
            Some(LevelFilter::ERROR) => on(false, false, true, 0),
            Some(LevelFilter::WARN) => on(false, true, true, 0),
            Some(LevelFilter::DEBUG) => on(true, true, true, 1),
            Some(LevelFilter::TRACE) => on(true, true, true, 2),
            _ => LogLevels::default(),
        }
    }

    /// The `EnvFilter` directives for these levels.
    fn directives(&self) -> Result<String, InferError> {
        let nested =
            (!self.info || self.warnings) && (!self.warnings || self.errors) && (self.verbose == 0 || self.info);
        if !nested {
            return Err(InferError::invalid(
                "ferroserve filters logs by level: log_info needs log_warning and log_error, log_warning needs \
                 log_error, and a log_verbose_level above 0 needs log_info",
            ));
        }
        Ok(match (self.verbose, self.info, self.warnings, self.errors) {
            (2.., ..) => "debug".into(),
            (1, ..) => "info,ort=warn,ferroserve=debug".into(),
            (0, true, ..) => "info,ort=warn".into(),
            (0, false, true, _) => "warn".into(),
            (0, false, false, true) => "error".into(),
            _ => "off".into(),
        })
    }
}

/// One setting's value, as either protocol carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Setting {
    /// `bool_param` / a JSON boolean.
    Bool(bool),
    /// `uint32_param` / a JSON number.
    Uint(u32),
    /// `string_param` / a JSON string.
    Text(String),
}

/// Every setting, by Triton's names, in Triton's order.
pub fn settings(levels: LogLevels) -> Vec<(&'static str, Setting)> {
    vec![
        ("log_file", Setting::Text(String::new())),
        ("log_info", Setting::Bool(levels.info)),
        ("log_warning", Setting::Bool(levels.warnings)),
        ("log_error", Setting::Bool(levels.errors)),
        ("log_verbose_level", Setting::Uint(levels.verbose)),
        ("log_format", Setting::Text(FORMAT.into())),
    ]
}

/// `levels` with the named settings changed; an unknown name, a value of the wrong type, a log file or a format
/// this server cannot write is refused, naming it.
pub fn changed<'a>(
    mut levels: LogLevels,
    updates: impl IntoIterator<Item = (&'a str, Setting)>,
) -> Result<LogLevels, InferError> {
    for (name, value) in updates {
        match (name, value) {
            ("log_info", Setting::Bool(b)) => levels.info = b,
            ("log_warning" | "log_warnings", Setting::Bool(b)) => levels.warnings = b,
            ("log_error" | "log_errors", Setting::Bool(b)) => levels.errors = b,
            ("log_verbose_level", Setting::Uint(v)) => levels.verbose = v,
            ("log_file", Setting::Text(f)) if f.is_empty() => {}
            ("log_file", Setting::Text(_)) => {
                return Err(InferError::invalid("ferroserve logs to stderr only: log_file must be \"\""));
            }
            ("log_format", Setting::Text(f)) if f == FORMAT => {}
            ("log_format", Setting::Text(f)) => {
                return Err(InferError::invalid(format!(
                    "log_format `{f}` is not available: ferroserve stamps ISO 8601 times (\"{FORMAT}\"), as text or \
                     JSON (--log-format)"
                )));
            }
            ("log_info" | "log_warning" | "log_warnings" | "log_error" | "log_errors", _) => {
                return Err(InferError::invalid(format!("log setting `{name}` must be a boolean")));
            }
            ("log_verbose_level", _) => {
                return Err(InferError::invalid("log setting `log_verbose_level` must be an unsigned 32-bit integer"));
            }
            ("log_file" | "log_format", _) => {
                return Err(InferError::invalid(format!("log setting `{name}` must be a string")));
            }
            _ => return Err(InferError::invalid(format!("unknown log setting `{name}`"))),
        }
    }
    levels.directives()?;
    Ok(levels)
}

/// The process's log filter, reloadable.
struct Control {
    handle: reload::Handle<EnvFilter, Registry>,
    levels: Mutex<LogLevels>,
    /// Directives every filter keeps (the exported traces' target).
    extra: Option<String>,
}

static CONTROL: OnceLock<Control> = OnceLock::new();

/// Makes `filter` (as `RUST_LOG` set it) the reloadable global filter, with `extra` directives kept through every
/// change. Called once, by [`crate::telemetry::init`].
pub(crate) fn install(filter: EnvFilter, extra: Option<String>) -> anyhow::Result<reload::Layer<EnvFilter, Registry>> {
    let levels = LogLevels::of(filter.max_level_hint());
    let filter = match &extra {
        Some(directive) => filter.add_directive(directive.parse()?),
        None => filter,
    };
    let (layer, handle) = reload::Layer::new(filter);
    let _ = CONTROL.set(Control { handle, levels: Mutex::new(levels), extra });
    Ok(layer)
}

/// The levels logged now.
pub fn current() -> LogLevels {
    CONTROL.get().map_or_else(LogLevels::default, |c| *c.levels.lock().unwrap_or_else(PoisonError::into_inner))
}

/// Applies `updates` to the running filter; returns the levels now logged.
pub fn update<'a>(updates: impl IntoIterator<Item = (&'a str, Setting)>) -> Result<LogLevels, InferError> {
    let Some(control) = CONTROL.get() else {
        return Err(InferError::Unsupported("this process's logging cannot be changed while it runs".into()));
    };
    let mut levels = control.levels.lock().unwrap_or_else(PoisonError::into_inner);
    let next = changed(*levels, updates)?;
    if next != *levels {
        let mut directives = next.directives()?;
        if let Some(extra) = &control.extra {
            directives = format!("{directives},{extra}");
        }
        let filter = EnvFilter::try_new(&directives)
            .map_err(|e| InferError::Internal(format!("log filter `{directives}`: {e}")))?;
        control.handle.reload(filter).map_err(|e| InferError::Internal(format!("reloading the log filter: {e}")))?;
        tracing::info!(directives, "log settings changed");
        *levels = next;
    }
    Ok(*levels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_levels_follow_the_filter() {
        assert_eq!(LogLevels::of(None), LogLevels::default());
        assert_eq!(LogLevels::of(Some(LevelFilter::INFO)), LogLevels::default());
        assert!(!LogLevels::of(Some(LevelFilter::WARN)).info);
        assert_eq!(LogLevels::of(Some(LevelFilter::DEBUG)).verbose, 1);
        assert_eq!(
            LogLevels::of(Some(LevelFilter::OFF)),
            LogLevels { info: false, warnings: false, errors: false, verbose: 0 }
        );
    }

    #[test]
    fn changes_apply_by_name_and_must_nest() {
        let start = LogLevels::default();
        let quiet = changed(start, [("log_info", Setting::Bool(false))]).unwrap();
        let plural = [("log_info", Setting::Bool(false)), ("log_warnings", Setting::Bool(false))];
        assert_eq!(changed(start, plural).unwrap().directives().unwrap(), "error", "Triton's documented plurals");
        assert_eq!((quiet.info, quiet.warnings, quiet.directives().unwrap().as_str()), (false, true, "warn"));
        let verbose = changed(start, [("log_verbose_level", Setting::Uint(1))]).unwrap();
        assert_eq!(verbose.directives().unwrap(), "info,ort=warn,ferroserve=debug");
        assert_eq!(changed(start, [("log_verbose_level", Setting::Uint(7))]).unwrap().directives().unwrap(), "debug");
        let off =
            [("log_info", false), ("log_warning", false), ("log_error", false)].map(|(n, b)| (n, Setting::Bool(b)));
        assert_eq!(changed(start, off).unwrap().directives().unwrap(), "off");
        let unchanged = [("log_file", Setting::Text(String::new())), ("log_format", Setting::Text("ISO8601".into()))];
        assert_eq!(changed(start, unchanged).unwrap(), start);
        for bad in [
            vec![("log_warning", Setting::Bool(false))],
            vec![("log_info", Setting::Bool(false)), ("log_verbose_level", Setting::Uint(1))],
            vec![("log_info", Setting::Uint(1))],
            vec![("log_verbose_level", Setting::Bool(true))],
            vec![("log_file", Setting::Text("/tmp/x.log".into()))],
            vec![("log_format", Setting::Text("default".into()))],
            vec![("log_colour", Setting::Bool(true))],
        ] {
            let error = changed(start, bad.clone()).unwrap_err();
            assert!(matches!(error, InferError::InvalidInput(_)), "{bad:?}: {error}");
        }
    }

    #[test]
    fn settings_use_tritons_names() {
        let names: Vec<&str> = settings(LogLevels::default()).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["log_file", "log_info", "log_warning", "log_error", "log_verbose_level", "log_format"]);
    }
}
