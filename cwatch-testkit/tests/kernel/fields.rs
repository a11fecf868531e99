//! Every field cwatch reads from `struct sock` at a BTF-resolved offset,
//! checked against the kernel's own answer: `ss -tnep` (cookie as sk:<hex>,
//! addresses, ports, holder) and /proc/<pid>/ns/net (network namespace). A
//! wrong offset of the right size passes the verifier; it cannot pass this.
use std::time::Duration;

use cwatch_testkit::{daemon::Daemon, load::Load, ss, wait_for};

use crate::common::{api_to_port, free_port_on, serial, ss_to_port};

fn netns_inode(pid: u32) -> u64 {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    let text = link.to_string_lossy();
    text.trim_start_matches("net:[")
        .trim_end_matches(']')
        .parse()
        .unwrap()
}

#[test]
fn every_field_matches_ss_and_proc() {
    let _serial = serial();
    const N: usize = 25;
    let port = free_port_on(&["127.0.4.1", "127.0.4.2", "::1"]);
    let targets = [
        format!("127.0.4.1:{port}"),
        format!("127.0.4.2:{port}"),
        format!("[::1]:{port}"),
    ];
    let daemon = Daemon::start(&[]).unwrap();
    let mut server = Load::server(&targets).unwrap();
    let client = Load::client(
        "field-check",
        &targets.iter().map(|t| (t.clone(), N)).collect::<Vec<_>>(),
        "leak",
    )
    .unwrap();
    for t in &targets {
        server
            .ask(&format!("wait-accepted {t} {N}"), "accepted")
            .unwrap();
        server.ask(&format!("close {t}"), "closed").unwrap();
    }
    let truth = wait_for("ss shows them all", Duration::from_secs(5), || {
        let s = ss_to_port(port);
        if s.len() == 3 * N {
            Ok(s)
        } else {
            Err(format!("{}", s.len()))
        }
    })
    .unwrap();
    // Each shows up once tracked (`--track-after`), its owner once looked
    // up: wait for both (the latency of either is the bench's to measure,
    // and a VM under emulation is slow), then compare every field.
    let api = wait_for(
        "the API shows them all, owners known",
        Duration::from_secs(5),
        || {
            let a = api_to_port(&daemon.sockets().map_err(|e| e.to_string())?, port);
            let owned = a.iter().filter(|e| !e["pid"].is_null()).count();
            if a.len() == 3 * N && owned == a.len() {
                Ok(a)
            } else {
                Err(format!("{} shown, {owned} with a pid", a.len()))
            }
        },
    )
    .unwrap();
    let netns = netns_inode(client.pid);
    for truth in &truth {
        let entry = api
            .iter()
            .find(|e| e["cookie"].as_u64() == Some(truth.cookie))
            .unwrap_or_else(|| panic!("cookie {:#x} from ss is not in the API", truth.cookie));
        let holder = &truth.users[0];
        assert_eq!(
            entry["local_addr"],
            ss::shown(truth.local.ip()).to_string(),
            "{entry}"
        );
        assert_eq!(entry["local_port"], truth.local.port(), "{entry}");
        assert_eq!(
            entry["peer_addr"],
            ss::shown(truth.peer.ip()).to_string(),
            "{entry}"
        );
        assert_eq!(entry["peer_port"], truth.peer.port(), "{entry}");
        assert_eq!(entry["pid"], holder.pid, "{entry}");
        assert_eq!(entry["comm"], holder.comm.as_str(), "{entry}");
        assert_eq!(entry["netns"], netns, "{entry}");
        assert_eq!(entry["state"], "CLOSE_WAIT");
        assert_eq!(entry["direction"], "outbound");
        assert_eq!(entry["age_estimated"], false);
    }
    // Same count, every ss cookie found: the API holds exactly these.
    assert_eq!(api.len(), truth.len());
}
