//! Printing that ends the program quietly once its reader has gone.
//!
//! `singa layers | head -1` closes the pipe after one line; Rust's `println!` then panics. Like
//! other command-line tools, singa stops instead, silently, with the status a shell reports for
//! a program that a closed pipe stopped (141, 128 + SIGPIPE). Training prints only between
//! steps, on the thread that writes checkpoints, so stopping there never cuts a checkpoint
//! short (and checkpoints are written atomically anyway).

use std::io::{ErrorKind, Write};

/// The exit status of a program stopped by a closed pipe.
const CLOSED_PIPE_STATUS: i32 = 141;

/// Writes `args` to `to`; a closed pipe ends the program, any other error is ignored (there is
/// nowhere left to report it).
pub fn write(mut to: impl Write, args: std::fmt::Arguments<'_>) {
    if let Err(e) = to.write_fmt(args).and_then(|()| to.flush()) {
        if e.kind() == ErrorKind::BrokenPipe {
            std::process::exit(CLOSED_PIPE_STATUS);
        }
    }
}

/// `print!` that ends the program quietly when standard output is closed.
macro_rules! out {
    ($($arg:tt)*) => { $crate::output::write(std::io::stdout().lock(), format_args!($($arg)*)) };
}

/// `println!` that ends the program quietly when standard output is closed.
macro_rules! outln {
    () => { $crate::output::write(std::io::stdout().lock(), format_args!("\n")) };
    ($($arg:tt)*) => { $crate::output::write(std::io::stdout().lock(), format_args!("{}\n", format_args!($($arg)*))) };
}

/// `eprint!` that ends the program quietly when standard error is closed.
macro_rules! err {
    ($($arg:tt)*) => { $crate::output::write(std::io::stderr().lock(), format_args!($($arg)*)) };
}

/// `eprintln!` that ends the program quietly when standard error is closed.
macro_rules! errln {
    () => { $crate::output::write(std::io::stderr().lock(), format_args!("\n")) };
    ($($arg:tt)*) => { $crate::output::write(std::io::stderr().lock(), format_args!("{}\n", format_args!($($arg)*))) };
}

pub(crate) use {err, errln, out, outln};
