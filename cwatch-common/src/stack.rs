//! What the kernel captures at connect() for leak provenance: the user
//! registers and a bounded slice of the user stack at sp, kept by socket
//! cookie in `SAMPLES` until the daemon unwinds it or the socket is freed.

/// Bytes of user stack copied at connect(), from sp upwards. A read that
/// would run past the top of the stack copies up to the last page it can.
/// 128 bytes short of 16 KiB so that a `SAMPLES` element (the kernel's hash
/// element header, the key, this value, the allocator's list node) fits a
/// 16 KiB allocation: at 16 KiB exactly each would take 32 KiB.
pub const STACK_BYTES: usize = (16 << 10) - 128;

/// Default entries of `SAMPLES` (each one a [`StackSample`] in a 16 KiB
/// allocation, only while held: the map is not preallocated).
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
