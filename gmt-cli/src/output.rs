//! Results on stdout. A reader that stops early (`gmt info | head -3`) closes the pipe, and
//! `println!` would panic on the next line; [`outln!`] ends the program quietly instead (the
//! reader has what it wanted, as ripgrep does), and any other write error ends it with an
//! error message and exit code 1.

use std::fmt;
use std::io::{self, ErrorKind, Write};

/// `println!` to stdout, ending the program quietly on a closed pipe.
macro_rules! outln {
    () => {
        $crate::output::write(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::write(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` to stdout (flushed), ending the program quietly on a closed pipe.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write(format_args!($($arg)*))
    };
}

/// Writes `text` to stdout and flushes it.
pub fn write(text: fmt::Arguments<'_>) {
    let mut stdout = io::stdout().lock();
    match stdout.write_fmt(text).and_then(|()| stdout.flush()) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("error: cannot write to stdout: {e}");
            std::process::exit(1);
        }
    }
}
