//! The one error type of singa.
//!
//! It crosses the plugin boundary, so it is built from ABI-stable parts (`RString`, `RBox`);
//! the variants say *what kind* of thing went wrong and carry the file, field, offset or layer
//! a user needs to fix it.

use abi_stable::std_types::{RBox, RString};
use abi_stable::StableAbi;
use std::fmt::Display;
use std::io::Write;

/// A `Result` with singa's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in singa, as one structured type.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, thiserror::Error)]
pub enum Error {
    /// A job file (or a config built in code) is wrong: which file, which field, what was expected.
    #[error("{file}: {field}: {message}")]
    Config {
        /// The job file (or `<code>` for configs built in Rust).
        file: RString,
        /// The dotted path of the field, e.g. `layer[2].num_output`.
        field: RString,
        /// What is wrong and what was expected.
        message: RString,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {message}")]
    Io {
        /// The file or directory.
        path: RString,
        /// The operating system's reason.
        message: RString,
    },
    /// A data file is malformed: truncated, corrupted, or of an unexpected format.
    #[error("{file}: at byte offset {offset}: {message}")]
    Data {
        /// The data file.
        file: RString,
        /// Where in the file the problem was found.
        offset: u64,
        /// What is wrong.
        message: RString,
    },
    /// Tensor shapes do not fit together.
    #[error("shape mismatch in {context}: {message}")]
    Shape {
        /// The operation or layer.
        context: RString,
        /// The shapes involved.
        message: RString,
    },
    /// A device failed (out of memory, driver error, no such device).
    #[error("device {device}: {message}")]
    Device {
        /// The device, e.g. `cpu` or `cuda:0`.
        device: RString,
        /// What failed.
        message: RString,
    },
    /// An operation is not implemented for this dtype or device.
    #[error("device {device} does not support {what}")]
    Unsupported {
        /// The device.
        device: RString,
        /// The operation and dtype that are missing.
        what: RString,
    },
    /// A checkpoint cannot be written, read, or does not match the net.
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The checkpoint file.
        path: RString,
        /// What is wrong.
        message: RString,
    },
    /// A plugin cannot be loaded or misbehaved.
    #[error("plugin {plugin}: {message}")]
    Plugin {
        /// The plugin library.
        plugin: RString,
        /// What is wrong.
        message: RString,
    },
    /// Code panicked; the panic was caught and turned into this error.
    #[error("{what} panicked: {message}")]
    Panic {
        /// Which component panicked.
        what: RString,
        /// The panic message.
        message: RString,
    },
    /// A wait ran past its deadline.
    #[error("timed out after {seconds:.1} s waiting for {waiting_for}")]
    Timeout {
        /// Who or what was waited for.
        waiting_for: RString,
        /// How long the wait lasted.
        seconds: f64,
    },
    /// Training produced a number that is not finite (NaN or infinity): a loss, a layer's
    /// output or a parameter.
    #[error("training diverged: {message}")]
    Diverged {
        /// What is not finite, where, and at which step.
        message: RString,
    },
    /// An argument is invalid.
    #[error("{message}")]
    Invalid {
        /// What is wrong.
        message: RString,
    },
    /// Another error, with the place it happened in.
    #[error("{context}: {inner}")]
    Context {
        /// Where the inner error happened (e.g. `layer fc1`).
        context: RString,
        /// The error itself.
        inner: RBox<Error>,
    },
}

impl Error {
    /// A job-file error.
    pub fn config(file: impl Display, field: impl Display, message: impl Display) -> Error {
        Error::Config {
            file: file.to_string().into(),
            field: field.to_string().into(),
            message: message.to_string().into(),
        }
    }

    /// An I/O error on `path`.
    pub fn io(path: impl AsRef<std::path::Path>, err: impl Display) -> Error {
        Error::Io {
            path: path.as_ref().display().to_string().into(),
            message: err.to_string().into(),
        }
    }

    /// A malformed data file.
    pub fn data(file: impl AsRef<std::path::Path>, offset: u64, message: impl Display) -> Error {
        Error::Data {
            file: file.as_ref().display().to_string().into(),
            offset,
            message: message.to_string().into(),
        }
    }

    /// A shape mismatch.
    pub fn shape(context: impl Display, message: impl Display) -> Error {
        Error::Shape {
            context: context.to_string().into(),
            message: message.to_string().into(),
        }
    }

    /// A device failure.
    pub fn device(device: impl Display, message: impl Display) -> Error {
        Error::Device {
            device: device.to_string().into(),
            message: message.to_string().into(),
        }
    }

    /// A missing operation or dtype on a device.
    pub fn unsupported(device: impl Display, what: impl Display) -> Error {
        Error::Unsupported {
            device: device.to_string().into(),
            what: what.to_string().into(),
        }
    }

    /// A checkpoint problem.
    pub fn checkpoint(path: impl AsRef<std::path::Path>, message: impl Display) -> Error {
        Error::Checkpoint {
            path: path.as_ref().display().to_string().into(),
            message: message.to_string().into(),
        }
    }

    /// A plugin problem.
    pub fn plugin(plugin: impl Display, message: impl Display) -> Error {
        Error::Plugin {
            plugin: plugin.to_string().into(),
            message: message.to_string().into(),
        }
    }

    /// An invalid argument.
    pub fn invalid(message: impl Display) -> Error {
        Error::Invalid {
            message: message.to_string().into(),
        }
    }

    /// Training diverged: `message` says what is not finite and where.
    pub fn diverged(message: impl Display) -> Error {
        Error::Diverged {
            message: message.to_string().into(),
        }
    }

    /// A timeout while waiting for `waiting_for`.
    pub fn timeout(waiting_for: impl Display, seconds: f64) -> Error {
        Error::Timeout {
            waiting_for: waiting_for.to_string().into(),
            seconds,
        }
    }

    /// A caught panic, from the payload `std::panic::catch_unwind` returned.
    pub fn from_panic(what: impl Display, payload: &(dyn std::any::Any + Send)) -> Error {
        let message = if let Some(s) = payload.downcast_ref::<&str>() {
            (*s).to_string()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "(no message)".to_string()
        };
        Error::Panic {
            what: what.to_string().into(),
            message: message.into(),
        }
    }

    /// Wraps this error with the place it happened in.
    pub fn context(self, context: impl Display) -> Error {
        Error::Context {
            context: context.to_string().into(),
            inner: RBox::new(self),
        }
    }

    /// The innermost error, under all [`Error::Context`] wrappers.
    pub fn root(&self) -> &Error {
        match self {
            Error::Context { inner, .. } => inner.root(),
            e => e,
        }
    }
}

/// Adds context to the error of a `Result`.
pub trait ResultExt<T> {
    /// Wraps the error with the place it happened in; `context` is only evaluated on error.
    fn context<C: Display>(self, context: impl FnOnce() -> C) -> Result<T>;
}

impl<T> ResultExt<T> for Result<T> {
    fn context<C: Display>(self, context: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|e| e.context(context()))
    }
}

/// Runs `f`, turning a panic into [`Error::Panic`] naming `what` and where it panicked.
///
/// Every implementation of an ABI-stable trait routes its methods through this: a panic that
/// unwinds into an `extern "C"` boundary would abort the whole process. The panic is not
/// printed (the error carries its message and location) unless `RUST_BACKTRACE` asks for
/// backtraces.
pub fn catch_panic<T>(what: impl Display, f: impl FnOnce() -> Result<T>) -> Result<T> {
    quiet_panics::install();
    quiet_panics::LOCATION.with(|l| l.borrow_mut().take());
    quiet_panics::DEPTH.with(|d| d.set(d.get() + 1));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    quiet_panics::DEPTH.with(|d| d.set(d.get() - 1));
    match result {
        Ok(r) => r,
        Err(payload) => {
            // One line, whatever the message (`assert_eq!` writes several).
            let e = match Error::from_panic(what, payload.as_ref()) {
                Error::Panic { what, message } => Error::Panic {
                    what,
                    message: message
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ")
                        .into(),
                },
                e => e,
            };
            match (quiet_panics::LOCATION.with(|l| l.take()), e) {
                (Some(at), Error::Panic { what, message }) => Err(Error::Panic {
                    what,
                    message: format!("{message} (at {at})").into(),
                }),
                (_, e) => Err(e),
            }
        }
    }
}

/// An implementation of an ABI-stable trait whose methods catch panics, reporting them as
/// errors naming `what` (the layer and updater traits implement themselves for it). Its drop
/// catches a panic too.
pub(crate) struct Guarded<T> {
    pub what: String,
    /// Dropped by `Guarded`'s own `Drop`.
    pub inner: std::mem::ManuallyDrop<T>,
}

impl<T> Guarded<T> {
    /// `inner`, guarded, named `what` in errors.
    pub fn new(what: String, inner: T) -> Guarded<T> {
        Guarded {
            what,
            inner: std::mem::ManuallyDrop::new(inner),
        }
    }
}

impl<T> Drop for Guarded<T> {
    fn drop(&mut self) {
        // SAFETY: `inner` is taken once, here, and never used again.
        let inner = unsafe { std::mem::ManuallyDrop::take(&mut self.inner) };
        if let Err(e) = catch_panic(format_args!("{} (dropping it)", self.what), || {
            drop(inner);
            Ok(())
        }) {
            // Nobody is left to return the error to.
            let _ = writeln!(std::io::stderr(), "warning: {e}");
        }
    }
}

/// A panic hook that, inside [`catch_panic`], records where the panic happened instead of
/// printing it, and otherwise defers to the hook it replaced. (A plugin has its own copy of
/// the standard library and of this module, so it installs its own.)
mod quiet_panics {
    use std::cell::{Cell, RefCell};
    use std::sync::Once;

    thread_local! {
        /// How many `catch_panic` calls this thread is inside.
        pub(super) static DEPTH: Cell<u32> = const { Cell::new(0) };
        /// Where the last caught panic happened.
        pub(super) static LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
    }

    pub(super) fn install() {
        static INSTALL: Once = Once::new();
        INSTALL.call_once(|| {
            let previous = std::panic::take_hook();
            let backtraces = std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0");
            std::panic::set_hook(Box::new(move |info| {
                let caught = DEPTH.with(|d| d.get()) > 0;
                if !caught || backtraces {
                    previous(info);
                }
                if caught {
                    let at = info.location().map(|l| l.to_string());
                    LOCATION.with(|l| *l.borrow_mut() = at);
                }
            }));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_place() {
        let e = Error::config("job.toml", "layer[1].num_output", "expected an integer");
        assert_eq!(
            e.to_string(),
            "job.toml: layer[1].num_output: expected an integer"
        );
        let e = Error::data("train.shard", 4096, "checksum mismatch").context("layer data");
        assert_eq!(
            e.to_string(),
            "layer data: train.shard: at byte offset 4096: checksum mismatch"
        );
        assert!(matches!(e.root(), Error::Data { offset: 4096, .. }));
    }

    #[test]
    fn panics_become_errors() {
        let r: Result<()> = catch_panic("layer fc1", || panic!("boom"));
        let line = line!() - 1;
        assert_eq!(
            r.unwrap_err().to_string(),
            format!("layer fc1 panicked: boom (at singa-core/src/error.rs:{line}:57)")
        );
        let r: Result<()> = catch_panic("x", || panic!("{}", String::from("owned")));
        assert!(r
            .unwrap_err()
            .to_string()
            .starts_with("x panicked: owned (at "));
        let r: Result<()> = catch_panic("y", || panic!("two\nlines"));
        assert!(r
            .unwrap_err()
            .to_string()
            .starts_with("y panicked: two lines (at "));
    }
}
