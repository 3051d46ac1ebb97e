//! `fleetgate passwd FILE USER`: adds or changes one user's password in an argon2id password file (created with
//! mode 0600 when missing; `fleetgate_auth::set_password` does the file work). The password is read from the
//! terminal without echo (asked twice), or as one line from stdin when stdin is not a terminal
//! (`echo secret | fleetgate passwd FILE USER`). The password is never printed or logged.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};
use rustix::termios::{self, LocalModes, OptionalActions};

/// Longest password line read from stdin: far above any sensible password, small enough that piping a file in by
/// mistake fails instead of hashing megabytes.
const MAX_PASSWORD_LEN: usize = 4096;

/// Reads the password and stores it for `user` in `file`.
pub fn run(file: &Path, user: &str) -> Result<()> {
    let password = if std::io::stdin().is_terminal() {
        let first = prompt_hidden("Password: ")?;
        let again = prompt_hidden("Repeat password: ")?;
        if first != again {
            bail!("the passwords do not match");
        }
        first
    } else {
        read_line()?
    };
    if password.len() > MAX_PASSWORD_LEN {
        bail!("the password is longer than {MAX_PASSWORD_LEN} bytes");
    }
    fleetgate_auth::set_password(file, user, &password)
        .with_context(|| format!("cannot set the password of {user:?}"))?;
    eprintln!("{}: password of {user:?} set", file.display());
    Ok(())
}

/// One line of stdin without its line ending.
fn read_line() -> Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from stdin")?;
    let trimmed = line.trim_end_matches(['\n', '\r']).len();
    line.truncate(trimmed);
    Ok(line)
}

/// Prints `prompt` on stderr and reads a line from the terminal with echo off (restored even on error).
fn prompt_hidden(prompt: &str) -> Result<String> {
    let stdin = std::io::stdin();
    let saved = termios::tcgetattr(&stdin).context("cannot read the terminal settings")?;
    let mut silent = saved.clone();
    silent.local_modes.remove(LocalModes::ECHO);
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    termios::tcsetattr(&stdin, OptionalActions::Now, &silent)
        .context("cannot turn terminal echo off")?;
    let line = read_line();
    let restored = termios::tcsetattr(&stdin, OptionalActions::Now, &saved);
    eprintln!();
    restored.context("cannot restore terminal echo")?;
    line
}
