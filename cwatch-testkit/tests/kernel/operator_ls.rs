//! The operator's view: `cwatch ls` (table, filters, JSON) and the API's
//! filters and pages against `ss`; then a SIGHUP reload that shortens
//! leak-after (and one with a broken file that changes nothing), with the
//! journal line naming the leaking process and peer.
use std::{collections::BTreeSet, process::Command, time::Duration};

use cwatch_testkit::{
    daemon::{Daemon, cwatch_bin},
    load::Load,
    wait_for,
};
use rustix::process::Signal;

use crate::common::{api_to_port, serial, ss_to_port};

fn ls(daemon: &Daemon, args: &[&str]) -> String {
    String::from_utf8(crate::common::client(daemon, "ls", args)).unwrap()
}

/// Table rows (not the header or the summaries) whose PEER column ends in `:port`.
fn rows_to_port(table: &str, port: u16) -> Vec<Vec<String>> {
    // The summary comes first; the rows follow the AGE header.
    table
        .lines()
        .skip_while(|l| !l.starts_with("AGE"))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .filter(|cols| {
            cols.get(4)
                .is_some_and(|p| p.ends_with(&format!(":{port}")))
        })
        .collect()
}

/// Cookies of every page of `/api/v1/sockets?QUERY&limit=N`.
fn paged_cookies(daemon: &Daemon, query: &str, limit: usize) -> Vec<u64> {
    let mut cookies = Vec::new();
    let mut cursor = String::new();
    for _ in 0..1000 {
        let path = format!("/api/v1/sockets?{query}&limit={limit}{cursor}");
        let (status, body, next) = get_with_cursor(daemon, &path);
        assert_eq!(status, 200, "{path}: {body}");
        let page: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
        assert!(page.len() <= limit);
        cookies.extend(page.iter().map(|s| s["cookie"].as_u64().unwrap()));
        match next {
            Some(c) => cursor = format!("&cursor={c}"),
            None => return cookies,
        }
    }
    panic!("pages never ended")
}

fn get_with_cursor(daemon: &Daemon, path: &str) -> (u16, String, Option<String>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut r = agent
        .get(&format!("http://{}{path}", daemon.addr))
        .call()
        .unwrap();
    let next = r
        .headers()
        .get("x-next-cursor")
        .map(|v| v.to_str().unwrap().to_string());
    (
        r.status().as_u16(),
        r.body_mut().read_to_string().unwrap(),
        next,
    )
}

#[test]
fn ls_and_api_agree_with_ss_and_reload_applies_live() {
    let _serial = serial();
    let port = crate::common::free_port_on(&["127.0.2.1", "127.0.2.2"]);
    let (a, b) = (format!("127.0.2.1:{port}"), format!("127.0.2.2:{port}"));
    let dir = std::env::temp_dir().join(format!("cwatch-ls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("cwatch.toml");
    std::fs::write(&config, "leak_after = \"1h\"\n").unwrap();
    let daemon = Daemon::start(&["--config", config.to_str().unwrap()]).unwrap();

    let mut server = Load::server(&[a.clone(), b.clone()]).unwrap();
    let one = Load::client("ls-one", &[(a.clone(), 5), (b.clone(), 2)], "leak").unwrap();
    let two = Load::client("ls-two", &[(a.clone(), 3)], "leak").unwrap();
    server
        .ask(&format!("wait-accepted {a} 8"), "accepted")
        .unwrap();
    server
        .ask(&format!("wait-accepted {b} 2"), "accepted")
        .unwrap();
    server.ask(&format!("close {a}"), "closed").unwrap();
    server.ask(&format!("close {b}"), "closed").unwrap();
    let truth = ss_to_port(port);
    assert_eq!(truth.len(), 10, "{truth:?}");
    // Filtered by the daemon: the host may hold many other sockets.
    wait_for("the API to list all 10", Duration::from_secs(10), || {
        let n: usize = [&a, &b]
            .iter()
            .map(|peer| {
                let (_, body, _) =
                    get_with_cursor(&daemon, &format!("/api/v1/sockets?peer={peer}"));
                serde_json::from_str::<Vec<serde_json::Value>>(&body).map_or(0, |v| v.len())
            })
            .sum();
        if n == 10 { Ok(()) } else { Err(format!("{n}")) }
    })
    .unwrap();

    // The table: one row per socket, ports and owners as ss has them.
    let table = ls(&daemon, &[]);
    let rows = rows_to_port(&table, port);
    let ours = ls(&daemon, &["--pid", &one.pid.to_string()]);
    assert!(
        ours.contains(&format!("       7 {}/ls-one", one.pid)),
        "{ours}"
    );
    assert_eq!(rows.len(), 10, "{table}");
    assert!(table.starts_with("CLOSE_WAIT by peer:"), "{table}");
    assert!(
        table.contains(&format!("\n       8 {a}")) && table.contains(&format!("\n       2 {b}")),
        "the summary by peer: {table}"
    );
    let ss_locals: BTreeSet<String> = truth.iter().map(|s| s.local.to_string()).collect();
    let ls_locals: BTreeSet<String> = rows.iter().map(|r| r[3].clone()).collect();
    assert_eq!(ls_locals, ss_locals);
    for s in &truth {
        let row = rows.iter().find(|r| r[3] == s.local.to_string()).unwrap();
        let user = &s.users[0];
        assert_eq!(row[1], format!("{}/{}", user.pid, user.comm), "{row:?}");
        if row[2] != "-" {
            assert_eq!(row[2], user.fd.to_string(), "FD as ss has it: {row:?}");
        }
        assert_eq!(row.last().unwrap(), "no", "not leaked before 1h: {row:?}");
    }
    assert!(table.contains(&format!("       8 {a}")), "{table}");
    assert!(table.contains(&format!("       2 {b}")), "{table}");
    assert!(
        table.contains(&format!("       7 {}/ls-one", one.pid)),
        "{table}"
    );

    // Filters, in ls and in the API.
    let only_b = ls(&daemon, &["--peer", &b]);
    assert_eq!(rows_to_port(&only_b, port).len(), 2, "{only_b}");
    let only_two = ls(&daemon, &["--pid", &two.pid.to_string()]);
    assert_eq!(rows_to_port(&only_two, port).len(), 3, "{only_two}");
    assert!(rows_to_port(&ls(&daemon, &["--leaked"]), port).is_empty());
    let json: Vec<serde_json::Value> =
        serde_json::from_str(&ls(&daemon, &["--json", "--peer", &a])).unwrap();
    assert_eq!(api_to_port(&json, port).len(), 8);
    let ss_cookies: BTreeSet<u64> = truth.iter().map(|s| s.cookie).collect();
    for limit in [1, 3, 100] {
        let paged = paged_cookies(&daemon, &format!("peer=127.0.2.1:{port}"), limit);
        let want: BTreeSet<u64> = truth
            .iter()
            .filter(|s| s.peer.to_string() == a)
            .map(|s| s.cookie)
            .collect();
        assert_eq!(paged.len(), 8, "limit {limit}: no repeats, nothing skipped");
        assert_eq!(paged.iter().copied().collect::<BTreeSet<_>>(), want);
    }
    let all_pid_one = paged_cookies(&daemon, &format!("pid={}", one.pid), 2);
    assert_eq!(all_pid_one.len(), 7);
    assert!(all_pid_one.iter().all(|c| ss_cookies.contains(c)));
    for bad in ["limit=0", "pid=x", "peer=nowhere", "cursor=zz", "what=1"] {
        let (status, body, _) = get_with_cursor(&daemon, &format!("/api/v1/sockets?{bad}"));
        assert_eq!(status, 400, "{bad}: {body}");
    }

    // A broken file on SIGHUP changes nothing.
    std::fs::write(&config, "leak_after = \"soon\"\n").unwrap();
    daemon.signal(Signal::HUP).unwrap();
    wait_for(
        "the failed reload to be counted",
        Duration::from_secs(10),
        || {
            let m = daemon.metrics().map_err(|e| e.to_string())?;
            match m.get("cwatch_config_reloads_total", &[("result", "failure")]) {
                Some(v) if v >= 1.0 => Ok(m),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .map(|m| assert_eq!(m.scalar("cwatch_config_last_reload_successful"), Some(0.0)))
    .unwrap();
    assert!(
        daemon
            .log()
            .contains("reload failed, keeping the running config")
    );
    assert!(rows_to_port(&ls(&daemon, &["--leaked"]), port).is_empty());

    // A good one applies at once: every socket is now leaked, and the
    // journal names the process and the peer.
    std::fs::write(&config, "leak_after = \"1s\"\n").unwrap();
    daemon.signal(Signal::HUP).unwrap();
    let leaked = wait_for("reloaded leak_after", Duration::from_secs(20), || {
        let rows = rows_to_port(&ls(&daemon, &["--leaked"]), port);
        if rows.len() == 10 {
            Ok(rows)
        } else {
            Err(format!("{}", rows.len()))
        }
    })
    .unwrap();
    assert!(leaked.iter().all(|r| r.last().unwrap() == "yes"));
    let m = daemon.metrics().unwrap();
    assert_eq!(m.scalar("cwatch_config_last_reload_successful"), Some(1.0));
    let log = wait_for("the leak lines", Duration::from_secs(30), || {
        let log = daemon.log();
        let named = log.contains(&format!(
            "leak: process pid={} comm=ls-one holds 7 leaked",
            one.pid
        )) && log.contains(&format!("leak: peer {a} has 8 leaked"));
        if named {
            Ok(log)
        } else {
            Err("not yet".into())
        }
    })
    .unwrap();
    assert!(log.contains("SIGHUP: config reloaded"), "{log}");
    let named_once = log.matches("comm=ls-one holds").count();
    assert_eq!(named_once, 1, "one line per process crossing: {log}");
    drop((one, two, server));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `ls` fed by `args`, returning (stdout, stderr); must succeed.
fn ls_raw(args: &[&str]) -> (String, String) {
    let out = Command::new(cwatch_bin().unwrap())
        .arg("ls")
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "cwatch ls {args:?}: {stderr}");
    (String::from_utf8(out.stdout).unwrap(), stderr)
}

#[test]
fn ls_shows_keepalive_and_reads_the_kernel_when_no_daemon_runs() {
    let _serial = serial();
    let port = crate::common::free_port_on(&["127.0.2.3"]);
    let daemon = Daemon::start(&[]).unwrap();
    // Two connections held by this test process; one with SO_KEEPALIVE.
    let listener = std::net::TcpListener::bind(("127.0.2.3", port)).unwrap();
    let armed = std::net::TcpStream::connect(("127.0.2.3", port)).unwrap();
    let plain = std::net::TcpStream::connect(("127.0.2.3", port)).unwrap();
    rustix::net::sockopt::set_socket_keepalive(&armed, true).unwrap();
    for _ in 0..2 {
        drop(listener.accept().unwrap().0); // FIN: ours go to CLOSE_WAIT
    }
    let me = std::process::id();
    let truth = wait_for("both in CLOSE_WAIT", Duration::from_secs(10), || {
        let t = ss_to_port(port);
        if t.len() == 2 {
            Ok(t)
        } else {
            Err(format!("{}", t.len()))
        }
    })
    .unwrap();
    let peer = format!("127.0.2.3:{port}");
    let rows = wait_for("ls through the daemon", Duration::from_secs(10), || {
        let rows = rows_to_port(&ls(&daemon, &["--peer", &peer]), port);
        if rows.len() == 2 {
            Ok(rows)
        } else {
            Err(format!("{}", rows.len()))
        }
    })
    .unwrap();
    let keepalive_of = |rows: &[Vec<String>], local: std::net::SocketAddr| {
        rows.iter()
            .find(|r| r[3] == local.to_string())
            .map(|r| r[6].clone())
            .unwrap()
    };
    assert_eq!(
        keepalive_of(&rows, armed.local_addr().unwrap()),
        "on",
        "{rows:?}"
    );
    assert_eq!(
        keepalive_of(&rows, plain.local_addr().unwrap()),
        "off",
        "{rows:?}"
    );

    // No daemon at this address: the kernel's table, said so, ages marked.
    let nobody = format!("127.0.0.1:{}", cwatch_testkit::daemon::free_port().unwrap());
    let (table, stderr) = ls_raw(&["--listen", &nobody, "--peer", &peer]);
    assert!(
        stderr.contains("no daemon answers") && stderr.contains("estimated"),
        "{stderr}"
    );
    let rows = rows_to_port(&table, port);
    assert_eq!(rows.len(), 2, "{table}");
    for s in &truth {
        let row = rows.iter().find(|r| r[3] == s.local.to_string()).unwrap();
        let user = &s.users[0];
        assert_eq!(user.pid, me);
        assert_eq!(row[1], format!("{}/{}", user.pid, user.comm), "{row:?}");
        assert_eq!(row[2], user.fd.to_string(), "{row:?}");
        assert!(row[0].starts_with('~'), "estimated age: {row:?}");
        assert_eq!(row[7], "no", "default leak-after 5m: {row:?}");
    }
    assert_eq!(keepalive_of(&rows, armed.local_addr().unwrap()), "on");
    let (json, _) = ls_raw(&["--listen", &nobody, "--json", "--pid", &me.to_string()]);
    let json: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    let ours = api_to_port(&json, port);
    assert_eq!(ours.len(), 2);
    assert!(
        ours.iter()
            .all(|s| s["age_estimated"] == true && s["pid"] == me)
    );
    drop((armed, plain, listener));
}
