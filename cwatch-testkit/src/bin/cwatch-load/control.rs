//! The stdin/stdout control channel shared by both roles: writing one flushed
//! line per reply, reporting fatal errors, and reading command lines from
//! stdin on a thread of its own so that stdin EOF exits the process (code 0)
//! promptly, whatever the other threads are doing.

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::sync::mpsc::{self, Receiver};
use std::thread;

/// Write one line to stdout and flush it at once. A vanished reader is
/// ignored: the test that started us is gone, and stdin EOF will follow.
pub fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Write several lines as one block (one write, then flush), so a multi-line
/// reply is never interleaved with a line from another thread.
pub fn say_all(lines: &[String]) {
    let mut block = String::new();
    for line in lines {
        block.push_str(line);
        block.push('\n');
    }
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(block.as_bytes());
    let _ = out.flush();
}

/// Report a fatal error (one `error ...` line on stdout, a message on
/// stderr) and give the exit code 1.
pub fn fatal(err: &anyhow::Error) -> ExitCode {
    let text = one_line(&format!("{err:#}"));
    say(&format!("error {text}"));
    eprintln!("cwatch-load: error: {text}");
    ExitCode::FAILURE
}

/// Like [`fatal`] but for threads other than main: exits the process.
pub fn fatal_exit(err: &anyhow::Error) -> ! {
    let _ = fatal(err);
    std::process::exit(1)
}

/// Collapse line breaks so an error is always exactly one line.
fn one_line(text: &str) -> String {
    text.split(['\n', '\r'])
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Start reading stdin lines on a thread. Each line (without its line end)
/// is sent on the returned channel; on EOF (or a read error) the process
/// exits with code 0 at once.
pub fn spawn_stdin_reader() -> anyhow::Result<Receiver<String>> {
    let (tx, rx) = mpsc::channel();
    thread::Builder::new()
        .name("stdin".to_string())
        .spawn(move || {
            let stdin = std::io::stdin();
            let mut lock = stdin.lock();
            let mut line = String::new();
            loop {
                line.clear();
                match lock.read_line(&mut line) {
                    Ok(0) | Err(_) => {
                        let _ = std::io::stdout().flush();
                        std::process::exit(0);
                    }
                    Ok(_) => {
                        let text = line.trim_end_matches(['\n', '\r']).to_string();
                        if tx.send(text).is_err() {
                            return;
                        }
                    }
                }
            }
        })
        .map_err(|e| anyhow::anyhow!("cannot start the stdin reader thread: {e}"))?;
    Ok(rx)
}

/// Split a command line into its verb and arguments (whitespace separated).
pub fn split_command(line: &str) -> (&str, Vec<&str>) {
    let mut words = line.split_whitespace();
    let verb = words.next().unwrap_or("");
    (verb, words.collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_become_one_line() {
        assert_eq!(one_line("a\nb\r\n  c  "), "a b c");
        assert_eq!(one_line("plain"), "plain");
    }

    #[test]
    fn commands_split_on_whitespace() {
        assert_eq!(
            split_command("  wait-accepted 127.0.0.1:7 10 "),
            ("wait-accepted", vec!["127.0.0.1:7", "10"])
        );
        assert_eq!(split_command(""), ("", vec![]));
    }
}
