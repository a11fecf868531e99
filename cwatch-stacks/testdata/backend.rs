// A Rust program that leaks one TCP connection to 127.0.0.1:<argv[1]>,
// opened from a known function, for cwatch's provenance kernel tests: it
// waits for a line on stdin, connects, says "connected", and never closes.
use std::{io::BufRead, net::TcpStream};

#[inline(never)]
fn open_backend_connection(port: u16) -> Option<TcpStream> {
    TcpStream::connect(("127.0.0.1", port)).ok() // CONNECT
}

#[inline(never)]
fn handle_request(port: u16) -> Option<TcpStream> {
    let stream = open_backend_connection(port);
    std::hint::black_box(&stream);
    stream
}

fn main() {
    let port = std::env::args().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    let mut go = String::new();
    let _ = std::io::stdin().lock().read_line(&mut go);
    let Some(stream) = handle_request(port) else {
        std::process::exit(1);
    };
    println!("connected");
    let _held = stream; // the leak: never closed while the process lives
    loop {
        std::thread::park();
    }
}
