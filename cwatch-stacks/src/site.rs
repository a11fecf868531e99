/*!
The call site of a stack: its first frames outside libc and the language
runtimes, as one line — `DataApi::connect_to (data_api.cc:120) ←
Worker::handle`. Runtime frames are recognised by module (libc, ld.so,
libstdc++, libgcc, libpthread, musl) and by symbol (C++ `std::`, Rust
`std`/`core`/`alloc`/`tokio`/`mio`/`socket2`, Go `runtime.`, `syscall.`,
`internal/…`, `net.`, `net/http.`, `crypto/tls.`, `context.`, `sync.`).
A frame without a name shows as `module+0xoffset`.
*/
use crate::symbolize::{Frame, Stack};

/// File names of runtime libraries (matched on the basename's start).
const RUNTIME_MODULES: &[&str] = &[
    "libc.so",
    "libc-",
    "ld-linux",
    "ld-musl",
    "ld-",
    "libpthread",
    "libstdc++",
    "libgcc_s",
    "libm.so",
    "libdl",
    "librt",
    "libresolv",
    "linux-vdso",
];

/// Symbol prefixes of runtime code linked into programs.
const RUNTIME_SYMBOLS: &[&str] = &[
    // C++ and Rust standard libraries.
    "std::",
    "__gnu_cxx::",
    "__cxxabiv1::",
    "core::",
    "alloc::",
    "tokio::",
    "mio::",
    "socket2::",
    "__rust_",
    // C start-up code linked into every program.
    "__libc_start",
    // Go.
    "runtime.",
    "runtime/",
    "syscall.",
    "internal/",
    "net.",
    "net/http.",
    "net/netip.",
    "crypto/tls.",
    "context.",
    "sync.",
];

/// libc's socket wrappers, when libc is linked statically.
const LIBC_WRAPPERS: &[&str] = &["connect", "__connect", "__libc_connect", "_start"];

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Whether a binary (by path) is libc, the dynamic loader or a language
/// runtime library.
pub fn is_runtime_module(path: &str) -> bool {
    let base = basename(path);
    RUNTIME_MODULES.iter().any(|p| base.starts_with(p))
}

/// Whether a frame belongs to libc or a language runtime.
pub fn is_runtime(frame: &Frame) -> bool {
    if frame.module.as_deref().is_some_and(is_runtime_module) {
        return true;
    }
    let Some(symbol) = &frame.symbol else {
        return false;
    };
    if let Some((ty, tr)) = symbol.strip_prefix('<').and_then(|s| s.split_once(" as ")) {
        // `<Type as Trait>::f` is the type's code, unless the type is no
        // path of its own (a generic, a closure, a primitive): then the
        // trait's (`<&mut F as core::ops::FnOnce>::call_once`).
        let ty = bare_type(ty);
        return runtime_path(ty) || (!ty.contains("::") && runtime_path(bare_type(tr)));
    }
    let s = bare_type(symbol.trim_start_matches('<'));
    runtime_path(s) || LIBC_WRAPPERS.contains(&s)
}

fn bare_type(s: &str) -> &str {
    let mut s = s.trim_start();
    loop {
        let t = s
            .trim_start_matches(['&', '*'])
            .trim_start_matches("mut ")
            .trim_start_matches("const ")
            .trim_start_matches("dyn ");
        if t == s {
            return s;
        }
        s = t;
    }
}

fn runtime_path(s: &str) -> bool {
    RUNTIME_SYMBOLS.iter().any(|p| s.starts_with(p))
}

/// A C++ name without its parameter list and qualifiers:
/// `DataApi::connect_to(std::string const&, int) const` → `DataApi::connect_to`.
/// Go's `main.(*Client).dial` and Rust paths pass through.
pub fn short_name(symbol: &str) -> &str {
    let mut s = symbol.trim_end();
    // gcc clones: `f(int) [clone .isra.0]`.
    while let Some(i) = s.rfind(" [clone ") {
        if !s.ends_with(']') {
            break;
        }
        s = s[..i].trim_end();
    }
    for q in [" const", " volatile", " &&", " &"] {
        if let Some(t) = s.strip_suffix(q) {
            s = t.trim_end();
        }
    }
    if !s.ends_with(')') {
        return symbol.trim_end();
    }
    let mut depth = 0usize;
    for (i, c) in s.char_indices().rev() {
        match c {
            ')' => depth += 1,
            '(' => {
                depth -= 1;
                if depth == 0 {
                    // `operator()` keeps its own parentheses.
                    let head = &s[..i];
                    return if head.is_empty() { s } else { head };
                }
            }
            _ => {}
        }
    }
    s
}

fn label(frame: &Frame) -> String {
    match (&frame.symbol, &frame.module, frame.offset) {
        (Some(sym), _, _) => short_name(sym).to_owned(),
        (None, Some(module), Some(off)) => format!("{}+{off:#x}", basename(module)),
        (None, Some(module), None) => basename(module).to_owned(),
        (None, None, _) => "?".to_owned(),
    }
}

/// The first two frames outside libc and the runtimes, as
/// `caller_name (file:line) ← its_caller`; `None` when every frame is
/// runtime (or the stack is empty).
pub fn site(stack: &Stack) -> Option<String> {
    let mut user = stack.frames.iter().filter(|f| !is_runtime(f));
    let first = user.next()?;
    let mut s = label(first);
    if let (Some(file), Some(line)) = (&first.file, first.line) {
        s += &format!(" ({}:{line})", basename(file));
    }
    if let Some(next) = user.next() {
        s += " ← ";
        s += &label(next);
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(symbol: Option<&str>, module: &str) -> Frame {
        Frame {
            symbol: symbol.map(str::to_owned),
            module: Some(module.to_owned()),
            ..Frame::default()
        }
    }

    #[test]
    fn skips_libc_and_runtimes_and_names_the_caller() {
        let libc = "/usr/lib/x86_64-linux-gnu/libc.so.6";
        let app = "/srv/app/order-svc";
        let mut connect_to = f(Some("DataApi::connect_to(std::string const&, int)"), app);
        connect_to.file = Some("/src/sdk/data_api.cc".into());
        connect_to.line = Some(120);
        let stack = Stack {
            frames: vec![
                f(Some("connect"), libc),
                f(Some("std::net::connect_timeout"), app),
                connect_to,
                f(Some("Worker::handle(Request&) const"), app),
                f(Some("main"), app),
                f(Some("__libc_start_call_main"), libc),
            ],
            partial: false,
        };
        assert_eq!(
            site(&stack).as_deref(),
            Some("DataApi::connect_to (data_api.cc:120) ← Worker::handle")
        );
    }

    #[test]
    fn runtime_frames_by_symbol() {
        let app = "/app";
        for s in [
            "<std::net::tcp::TcpStream>::connect::<&str>",
            "core::ops::function::FnOnce::call_once",
            "<&mut F as core::ops::FnOnce>::call_once",
            "tokio::runtime::task::raw::poll",
            "runtime.goexit.abi0",
            "syscall.Syscall",
            "internal/poll.(*FD).Init",
            "net.(*Dialer).DialContext",
            "net/http.(*Transport).dialConn",
            "std::__cxx11::basic_string<char>::basic_string()",
            "connect",
            "_start",
        ] {
            assert!(is_runtime(&f(Some(s), app)), "{s}");
        }
        for s in [
            "main",
            "main.openLeakyConnection",
            "leak::open_leaky_connection",
            "Worker::handle",
            "<leak::Pool as core::ops::Drop>::drop",
        ] {
            assert!(!is_runtime(&f(Some(s), app)), "{s}");
        }
        assert!(is_runtime(&f(None, "/lib/ld-linux-x86-64.so.2")));
        assert!(!is_runtime(&f(None, "/app")));
    }

    #[test]
    fn short_names() {
        assert_eq!(
            short_name("DataApi::connect_to(std::string const&, int) const"),
            "DataApi::connect_to"
        );
        assert_eq!(short_name("f(int) [clone .isra.0]"), "f");
        assert_eq!(short_name("Foo::operator()(int)"), "Foo::operator()");
        assert_eq!(short_name("ns::g(void (*)(int))"), "ns::g");
        assert_eq!(short_name("main.(*Client).dial"), "main.(*Client).dial");
        assert_eq!(
            short_name("leak::open_leaky_connection"),
            "leak::open_leaky_connection"
        );
    }

    #[test]
    fn unnamed_frames_show_module_and_offset() {
        let stack = Stack {
            frames: vec![
                f(Some("connect"), "/lib/x86_64-linux-gnu/libc.so.6"),
                Frame {
                    module: Some("/tmp/leak-stripped".into()),
                    offset: Some(0x11a9),
                    ..Frame::default()
                },
            ],
            partial: true,
        };
        assert_eq!(site(&stack).as_deref(), Some("leak-stripped+0x11a9"));
        assert_eq!(site(&Stack::default()), None);
    }
}
