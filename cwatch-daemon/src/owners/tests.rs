//! The attribution rules on a fixture `/proc` and a clock set by hand, no
//! root: the grace before a lookup, candidates and their families, the scan
//! budget, the patience before a walk and the gap between walks, unaccepted
//! sockets, dead sockets checked after their grace, and the refresh of
//! shared sockets and forked children.
use std::{sync::Arc, time::Duration};

use super::{
    DEAD_GRACE, GRACE, MISS_PATIENCE, SCAN_BUDGET, TICK,
    procfs::fixture::FakeProc,
    worker::{Instant, Worker, scan_again_at},
};
use crate::{
    clock::ManualClock,
    config::Config,
    state::State,
    table::{DeadEntry, SockEntry, tests::record},
};

const MS: Duration = Duration::from_millis(1);
/// Where the tests' clock starts (CLOCK_BOOTTIME ns).
const T0: u64 = 1_000_000_000_000;

/// A worker over `proc`, its state and its clock (at T0).
fn worker(proc: &FakeProc) -> (Worker, Arc<State>, Arc<ManualClock>) {
    let clock = ManualClock::at(T0);
    let state = Arc::new(State::new(Config::default(), Box::new(Arc::clone(&clock))));
    (Worker::new(Arc::clone(&state), proc.root()), state, clock)
}

/// A socket entering CLOSE_WAIT now, with the kernel's owner hint `pid`;
/// its inode is `1_000_000 + cookie` (see `record`).
fn enter(state: &State, cookie: u64, hint: Option<u32>) {
    let rec = record(cookie, state.clock.now_ns(), hint.map(|p| (p, "hint")));
    state.lock_table().insert(SockEntry::from_record(&rec));
}

fn inode(cookie: u64) -> u64 {
    1_000_000 + cookie
}

/// (pid, fd) of each holder of `cookie`, `None` while not looked up.
fn holders(state: &State, cookie: u64) -> Option<Vec<(u32, i32)>> {
    let table = state.lock_table();
    let e = table.get(cookie)?;
    e.resolved
        .then(|| e.holders.iter().map(|h| (h.pid, h.fd)).collect())
}

#[test]
fn young_sockets_wait_for_their_grace_then_their_candidate_is_scanned() {
    let mut proc = FakeProc::new();
    proc.process(10, 1, "client").socket(7, inode(1));
    let (mut w, state, clock) = worker(&proc);
    enter(&state, 1, Some(10));
    clock.advance(GRACE - MS);
    w.resolve_pending();
    assert_eq!(holders(&state, 1), None, "within the grace: no lookup");
    assert_eq!(state.telemetry.procfs_scan_counts(), (0, 0));
    clock.advance(2 * MS);
    w.resolve_pending();
    assert_eq!(holders(&state, 1), Some(vec![(10, 7)]));
    assert_eq!(
        state.telemetry.procfs_scan_counts(),
        (1, 0),
        "one process, no walk"
    );
    let table = state.lock_table();
    let owner = table
        .get(1)
        .and_then(|e| e.owner)
        .map(|o| o.comm.as_str().into_owned());
    assert_eq!(
        owner.as_deref(),
        Some("client"),
        "the holder's comm, not the hint's"
    );
}

#[test]
fn a_socket_held_by_a_forked_child_is_found_in_the_family() {
    let mut proc = FakeProc::new();
    proc.process(20, 1, "server");
    proc.process(21, 20, "worker").socket(4, inode(2));
    proc.process(22, 1, "stranger").socket(9, inode(2));
    let (mut w, state, clock) = worker(&proc);
    enter(&state, 2, Some(20));
    clock.advance(GRACE);
    w.resolve_pending();
    assert_eq!(
        holders(&state, 2),
        Some(vec![(21, 4)]),
        "the family is scanned, not every process"
    );
    assert_eq!(state.telemetry.procfs_scan_counts(), (2, 0));
}

#[test]
fn scans_keep_to_their_budget() {
    let t = Instant::at(T0);
    assert_eq!(scan_again_at(t, Duration::ZERO), Instant::at(T0) + TICK);
    assert_eq!(
        scan_again_at(t, 10 * MS),
        Instant::at(T0) + 10 * MS * SCAN_BUDGET,
        "a 10 ms scan waits a second"
    );
    // A candidate just scanned is not scanned again within its TICK, however
    // many new sockets it has.
    let mut proc = FakeProc::new();
    proc.process(30, 1, "app")
        .socket(3, inode(3))
        .socket(4, inode(4));
    let (mut w, state, clock) = worker(&proc);
    enter(&state, 3, Some(30));
    clock.advance(GRACE);
    w.resolve_pending();
    enter(&state, 4, Some(30));
    clock.advance(GRACE);
    assert!(GRACE < TICK);
    w.resolve_pending();
    assert_eq!(holders(&state, 4), None, "over its budget: waits");
    clock.advance(TICK - GRACE);
    w.resolve_pending();
    assert_eq!(holders(&state, 4), Some(vec![(30, 4)]));
    assert_eq!(state.telemetry.procfs_scan_counts(), (2, 0));
}

#[test]
fn sockets_their_candidates_do_not_hold_get_a_walk_after_patience_and_gap() {
    let mut proc = FakeProc::new();
    proc.process(40, 1, "sender");
    // Passed with SCM_RIGHTS to an unrelated process.
    proc.process(41, 1, "receiver")
        .socket(5, inode(5))
        .socket(6, inode(6));
    let (mut w, state, clock) = worker(&proc);
    enter(&state, 5, Some(40));
    clock.advance(GRACE);
    w.resolve_pending();
    assert_eq!(holders(&state, 5), None, "not found: retried, not given up");
    // Missing since that first lookup.
    clock.advance(MISS_PATIENCE - MS);
    w.resolve_pending();
    assert_eq!(state.telemetry.procfs_scan_counts().1, 0, "patience");
    // Past the patience, and past the candidate's scan budget (a pass with
    // nothing it may scan does nothing).
    clock.advance(TICK);
    w.resolve_pending();
    assert_eq!(holders(&state, 5), Some(vec![(41, 5)]));
    assert_eq!(state.telemetry.procfs_scan_counts().1, 1, "one walk");
    // Another lost socket soon after: its own patience, then a walk.
    enter(&state, 6, Some(40));
    clock.advance(GRACE.max(TICK));
    w.resolve_pending();
    assert_eq!(holders(&state, 6), None);
    assert_eq!(state.telemetry.procfs_scan_counts().1, 1);
    clock.advance(MISS_PATIENCE);
    w.resolve_pending();
    assert_eq!(holders(&state, 6), Some(vec![(41, 6)]));
    assert_eq!(state.telemetry.procfs_scan_counts().1, 2);
}

#[test]
fn sockets_nothing_points_at_are_found_among_new_processes_without_a_walk() {
    let mut proc = FakeProc::new();
    // Running before the worker: covered by the start-up walk.
    proc.process(60, 1, "old").socket(8, inode(8));
    let (mut w, state, clock) = worker(&proc);
    // Started since, in the root cgroup, not watched: no hint, no cgroup.
    proc.process(61, 1, "new").socket(7, inode(7));
    enter(&state, 7, None);
    clock.advance(GRACE);
    w.resolve_pending();
    assert_eq!(
        holders(&state, 7),
        Some(vec![(61, 7)]),
        "found among new processes"
    );
    assert_eq!(state.telemetry.procfs_scan_counts().1, 0, "without a walk");
    // An older process's socket: neither the known holder nor the new
    // processes hold it; after the patience, a walk does.
    enter(&state, 8, None);
    clock.advance(GRACE.max(TICK));
    w.resolve_pending();
    assert_eq!(holders(&state, 8), None);
    assert_eq!(state.telemetry.procfs_scan_counts().1, 0);
    clock.advance(MISS_PATIENCE);
    w.resolve_pending();
    assert_eq!(holders(&state, 8), Some(vec![(60, 8)]));
    assert_eq!(state.telemetry.procfs_scan_counts().1, 1, "one walk");
}

#[test]
fn unaccepted_sockets_resolve_without_a_scan() {
    let proc = FakeProc::new();
    let (mut w, state, clock) = worker(&proc);
    let mut rec = record(7, T0, Some((50, "listener")));
    rec.inode = 0;
    state.lock_table().insert(SockEntry::from_record(&rec));
    clock.advance(GRACE);
    w.resolve_pending();
    assert_eq!(holders(&state, 7), Some(vec![]));
    assert_eq!(state.telemetry.procfs_scan_counts(), (0, 0));
    let table = state.lock_table();
    assert_eq!(table.get(7).and_then(|e| e.owner).map(|o| o.pid), Some(50));
}

#[test]
fn dead_sockets_are_checked_after_their_grace() {
    let mut proc = FakeProc::new();
    proc.process(60, 1, "leaker").socket(8, inode(8));
    proc.process(61, 1, "closer");
    let (mut w, state, clock) = worker(&proc);
    for (cookie, pid) in [(8, 60), (9, 61)] {
        let sock = SockEntry::from_record(&record(cookie, T0, Some((pid, "x"))));
        state.lock_table().insert_dead(DeadEntry::left(
            sock,
            T0,
            cwatch_common::tcp_state::CLOSE as u16,
        ));
    }
    clock.advance(DEAD_GRACE - MS);
    w.resolve_pending();
    assert_eq!(
        state.lock_table().unverified().count(),
        2,
        "within the grace"
    );
    clock.advance(2 * MS);
    w.resolve_pending();
    let table = state.lock_table();
    assert_eq!(table.dead_len(), 1, "the one no fd holds is gone");
    let held = table.dead().next().map(|d| (d.sock.cookie, d.verified));
    assert_eq!(held, Some((8, true)));
}

#[test]
fn a_dead_socket_never_resolved_gets_a_walk_not_a_verdict() {
    // Killed while young: no holder was ever looked up and the kernel named
    // nobody. Dropping it as "held by none of its candidates" would hide a
    // leaked fd.
    let mut proc = FakeProc::new();
    proc.process(70, 1, "leaker").socket(9, inode(5));
    let (mut w, state, clock) = worker(&proc);
    let sock = SockEntry::from_record(&record(5, T0, None));
    state.lock_table().insert_dead(DeadEntry::left(
        sock,
        T0,
        cwatch_common::tcp_state::CLOSE as u16,
    ));
    clock.advance(DEAD_GRACE + MS);
    w.resolve_pending();
    assert_eq!(state.telemetry.procfs_scan_counts().1, 1, "one walk");
    let table = state.lock_table();
    let held = table.dead().next().map(|d| (d.sock.cookie, d.verified));
    assert_eq!(held, Some((5, true)), "verified held by pid 70");
}

#[test]
fn refresh_follows_shared_sockets_and_forked_children() {
    let mut proc = FakeProc::new();
    proc.process(70, 1, "parent").socket(3, inode(10));
    proc.process(71, 70, "child").socket(3, inode(10));
    let (mut w, state, clock) = worker(&proc);
    enter(&state, 10, Some(70));
    clock.advance(GRACE);
    w.resolve_pending();
    assert_eq!(holders(&state, 10), Some(vec![(70, 3), (71, 3)]));
    // The child closes its copy; a new child of the parent inherits one.
    proc.get(71).close(3);
    proc.process(72, 70, "child2").socket(5, inode(10));
    super::refresh::Refresh::default().run(&mut w);
    assert_eq!(holders(&state, 10), Some(vec![(70, 3), (72, 5)]));
}

#[test]
fn a_walk_asked_for_leaves_the_next_lookup_free_to_walk() {
    let mut proc = FakeProc::new();
    let (mut w, state, clock) = worker(&proc);
    // Started after the worker, listed by the walk start-up asked for
    // (which now runs after ready), its socket not tracked yet.
    proc.process(70, 1, "early").socket(3, inode(3));
    w.walk();
    enter(&state, 3, None);
    clock.advance(GRACE);
    w.resolve_pending();
    assert_eq!(
        holders(&state, 3),
        Some(vec![(70, 3)]),
        "walked for at once"
    );
    assert_eq!(state.telemetry.procfs_scan_counts().1, 2);
}
