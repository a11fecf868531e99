// A Rust program that opens one TCP connection to 127.0.0.1:<argv[1]> from
// a known function, for the cwatch-stacks tests.
use std::net::TcpStream;

#[inline(never)]
fn open_leaky_connection(port: u16) -> Option<TcpStream> {
    TcpStream::connect(("127.0.0.1", port)).ok() // CONNECT
}

#[inline(never)]
fn worker_handle(port: u16) -> usize {
    let stream = open_leaky_connection(port);
    let ok = std::hint::black_box(&stream).is_some();
    std::mem::forget(stream);
    usize::from(ok)
}

fn main() {
    let port = std::env::args().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    std::process::exit(if worker_handle(port) == 1 { 0 } else { 1 });
}
