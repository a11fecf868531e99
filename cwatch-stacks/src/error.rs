/*!
The crate's error type. Unwinding a sample fails only when its process's
address space cannot be read; everything else (a binary that cannot be
opened, no unwind data, the end of the captured slice) still yields a
stack, flagged `partial` where it may be incomplete.
*/
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}: {what}", path.display())]
    Maps {
        path: PathBuf,
        line: usize,
        what: String,
    },
    #[error("{}: {what}", path.display())]
    Module { path: PathBuf, what: String },
    #[error("the cwatch-stacks worker thread is gone")]
    WorkerGone,
}
