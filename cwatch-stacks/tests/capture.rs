//! The name is right: programs written for the test open a TCP connection
//! to our listener on 127.0.0.1 from a known function; ptrace stops them at
//! the entry of connect() and takes the sample the kernel will take (user
//! registers, 16 KiB of stack at rsp); the unwound, symbolized stack must
//! name that function and its caller in `site`, and every name it gives
//! must agree with addr2line. Needs ptrace of our own children (no root),
//! gcc, g++, rustc, binutils and go (`cargo xtask setup` installs them).
mod common;

use common::{
    assert_names_true, build_id, expected_site, have, nm_range, own_frames, run, run_with,
};
use cwatch_stacks::{Config, End, site, testing};

fn assert_whole_and_named(recipe: testing::Recipe) {
    let run = run(recipe);
    assert_eq!(site(&run.stack), Some(expected_site(&recipe)));
    assert!(!run.stack.partial, "{recipe:?} should unwind whole");
    assert_names_true(&run);
}

#[test]
fn c_without_frame_pointers() {
    assert_whole_and_named(testing::C_O2);
}

#[test]
fn c_with_frame_pointers() {
    assert_whole_and_named(testing::C_O2_FP);
}

#[test]
fn cpp() {
    // The incident's shape: an SDK method called by a worker.
    assert_whole_and_named(testing::CPP);
    assert_eq!(
        expected_site(&testing::CPP),
        "DataApi::connect_to (data_api.cc:24) ← Worker::handle"
    );
}

#[test]
fn rust() {
    assert_whole_and_named(testing::RUST);
}

#[test]
fn go() {
    if have("go") {
        assert_whole_and_named(testing::GO);
    }
}

#[test]
fn frame_pointers_without_unwind_tables_are_right_but_partial() {
    // No .eh_frame for the program's code: frame pointers carry the walk,
    // with nothing to vouch that no frame was skipped.
    let run = run(testing::C_FP_NO_CFI);
    assert_eq!(site(&run.stack), Some(expected_site(&testing::C_FP_NO_CFI)));
    assert!(run.stack.partial && run.trace.guessed());
    assert_names_true(&run);
}

#[test]
fn neither_frame_pointers_nor_unwind_tables_stop_without_a_wrong_name() {
    let run = run(testing::C_NO_FP_NO_CFI);
    assert!(run.stack.partial);
    // The walk stops in (or right after) the opener: what it names is true.
    assert_names_true(&run);
    let s = site(&run.stack).unwrap_or_default();
    assert!(s.starts_with("open_leaky_connection (leak.c:"), "{s}");
}

#[test]
fn stripped_c_shows_build_id_and_offsets_not_names() {
    let run = run(testing::C_STRIPPED);
    let own = own_frames(&run);
    assert!(own.len() >= 2, "{:?}", run.stack);
    for (_, f) in &own {
        assert_eq!(f.symbol, None, "a name from a stripped binary: {f:?}");
        assert_eq!(f.build_id, build_id(&run.exe), "{f:?}");
        assert!(f.build_id.is_some() && f.offset.is_some());
    }
    // The offsets are the opener and its caller, per the unstripped twin.
    let (opener, caller) = (own[0].0, own[1].0);
    assert!(nm_range(&run.twin, "open_leaky_connection").contains(&opener.svma));
    assert!(nm_range(&run.twin, "worker_handle").contains(&caller.svma));
    let s = site(&run.stack).unwrap_or_default();
    assert!(s.starts_with("c-O2-stripped.stripped+0x"), "{s}");
    // .eh_frame survives strip: the walk itself is whole.
    assert!(!run.stack.partial);
}

#[test]
fn stripped_go_shows_offsets_and_is_partial() {
    if !have("go") {
        return;
    }
    // -s -w: no symbols, no DWARF, no .debug_frame: frame pointers only,
    // and the first step (a frameless assembly leaf) may skip a frame.
    let run = run(testing::GO_STRIPPED);
    assert!(run.stack.partial);
    let own = own_frames(&run);
    assert!(
        own.iter().all(|(_, f)| f.symbol.is_none()),
        "{:?}",
        run.stack
    );
    let opener = nm_range(&run.twin, "main.openLeakyConnection");
    let caller = nm_range(&run.twin, "main.workerHandle");
    let i = own
        .iter()
        .position(|(raw, _)| opener.contains(&raw.svma))
        .expect("a frame in main.openLeakyConnection");
    assert!(caller.contains(&own[i + 1].0.svma));
}

#[test]
fn a_short_slice_ends_the_stack_cleanly() {
    // 256 bytes reach past libc's connect into the program, not to main.
    let run = run_with(testing::C_O2, 256, Config::default());
    assert_eq!(run.trace.end(), End::EndOfCapture);
    assert!(run.stack.partial);
    assert_names_true(&run);
}

#[test]
fn without_map_files_the_path_in_the_process_root_serves() {
    let cfg = Config {
        map_files: false,
        ..Config::default()
    };
    let run = run_with(testing::C_O2, common::STACK_BYTES, cfg);
    assert_eq!(site(&run.stack), Some(expected_site(&testing::C_O2)));
}

#[test]
fn evicted_binaries_are_opened_again_while_their_process_lives() {
    // One binary at a time: unwinding the C program (ld.so, libc, itself)
    // evicts, and symbolizing reopens through map_files or the root path.
    let cfg = Config {
        max_modules: 1,
        ..Config::default()
    };
    // Its own directory: the other tests build the same recipe in theirs.
    let dir = std::env::temp_dir().join(format!("cwatch-stacks-evict-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (exe, _) = testing::build(&testing::C_O2, &dir).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let capture = testing::capture_connect(&exe, port, common::STACK_BYTES).unwrap();
    let mut stacks = cwatch_stacks::Stacks::new(cfg);
    let trace = stacks.unwind(&capture.sample).unwrap();
    let stack = stacks.symbolize(&trace);
    assert!(stacks.stats().module_evictions > 0, "{:?}", stacks.stats());
    assert_eq!(stacks.stats().modules, 1);
    assert_eq!(site(&stack), Some(expected_site(&testing::C_O2)));
    drop(capture);
    std::fs::remove_dir_all(&dir).unwrap();
}
