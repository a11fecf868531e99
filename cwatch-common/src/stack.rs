//! What the kernel captures at connect() for leak provenance: the user
//! registers and a bounded slice of the user stack at sp, kept by socket
//! cookie in `SAMPLES` until the daemon unwinds it or the socket is freed.

/// Bytes of user stack copied at connect(), from sp upwards. A read that
/// would run past the top of the stack copies up to the last page it can.
pub const STACK_BYTES: usize = 16 << 10;

/// Default entries of `SAMPLES` (each one a [`StackSample`], ~16 KiB, only
/// allocated while held: the map is not preallocated).
pub const SAMPLES_ENTRIES: u32 = 1024;

/// One capture (value of `SAMPLES`, and the per-CPU scratch it is built in).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct StackSample {
    /// Thread-group id of the process that called connect().
    pub tgid: u32,
    /// Bytes of `stack` that hold the copy.
    pub len: u32,
    /// User registers at the system call: instruction, stack and frame
    /// pointer.
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// `stack[i]` is the byte at user address `sp + i`, for `i < len`.
    pub stack: [u8; STACK_BYTES],
}
