//! `cwatch ls` as an unprivileged user (`nobody`). With the daemon behind
//! basic auth it gets what the endpoint allows: without credentials, or
//! with wrong ones, nothing but one line saying so (exit 1, no fallback to
//! the kernel while a daemon answers); with the right ones in
//! `CWATCH_BASIC_AUTH`, the daemon's full list, owners of every user
//! included. With no daemon, its direct reading shows what the kernel shows
//! that user — every socket (sock_diag shows them to anyone), owners only of
//! its own processes — and its notice says so, with the count.
use std::{path::Path, process::Command, time::Duration};

use base64::Engine as _;
use cwatch_testkit::{
    daemon::{Daemon, cwatch_bin, free_port},
    load::{Load, load_bin},
    user, wait_for,
};

use crate::common::{serial, ss_to_port};

/// `cwatch ls --json --listen ADDR` as nobody, with `env`: (exit code,
/// stdout, stderr).
fn ls_as_nobody(bin: &Path, listen: &str, env: &[(&str, &str)]) -> (i32, String, String) {
    let wrapper = user::as_user(user::NOBODY);
    let out = Command::new(&wrapper[0])
        .args(&wrapper[1..])
        .arg(bin)
        .args(["ls", "--json", "--listen", listen])
        .env_remove("CWATCH_BASIC_AUTH")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A leak of `n` sockets to a port of its own, the client started through
/// `wrapper` from `bin`: (server, client, port).
fn leak(bin: &Path, wrapper: &[&str], comm: &str, n: usize) -> (Load, Load, u16) {
    let port = free_port().unwrap();
    let inst = format!("127.0.0.1:{port}");
    let mut server = Load::server(std::slice::from_ref(&inst)).unwrap();
    let args: Vec<String> = [
        "client",
        "--comm",
        comm,
        "--on-eof",
        "leak",
        "--connect",
        &inst,
        "--count",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([n.to_string()])
    .collect();
    let mut client = Load::spawn_bin(bin, wrapper, &args).unwrap();
    client.expect("connected", Duration::from_secs(60)).unwrap();
    server
        .ask(&format!("wait-accepted {inst} {n}"), "accepted")
        .unwrap();
    server.ask(&format!("close {inst}"), "closed").unwrap();
    (server, client, port)
}

fn to_port(json: &str, port: u16) -> Vec<serde_json::Value> {
    let all: Vec<serde_json::Value> =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("not the socket list ({e}): {json}"));
    all.into_iter().filter(|s| s["peer_port"] == port).collect()
}

#[test]
fn ls_as_nobody_gets_what_the_endpoint_or_the_kernel_allows() {
    let _serial = serial();
    let bin = user::executable_for_all(&cwatch_bin().unwrap()).unwrap();
    let load = user::executable_for_all(&load_bin().unwrap()).unwrap();
    // Root's leak, and nobody's own.
    let (_s1, root_client, root_port) = leak(&load, &[], "rootleak", 5);
    let nobody = user::as_user(user::NOBODY);
    let nobody: Vec<&str> = nobody.iter().map(String::as_str).collect();
    let (_s2, own_client, own_port) = leak(&load, &nobody, "ownleak", 3);

    let dir = std::env::temp_dir().join(format!("cwatch-ls-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let web = dir.join("web.yml");
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    std::fs::write(&web, format!("basic_auth_users:\n  prometheus: {hash}\n")).unwrap();
    let daemon = Daemon::spawn(&["--web.config.file", web.to_str().unwrap()]).unwrap();
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("prometheus:s3cret")
    );
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("http://{}/api/v1/sockets", daemon.addr);
    wait_for("both leaks in the API", Duration::from_secs(60), || {
        let mut r = agent
            .get(&url)
            .header("Authorization", &auth)
            .call()
            .map_err(|e| e.to_string())?;
        let body = r.body_mut().read_to_string().map_err(|e| e.to_string())?;
        let (root, own) = (to_port(&body, root_port), to_port(&body, own_port));
        if root.len() == 5 && own.len() == 3 && root.iter().chain(&own).all(|s| s["fd"].is_number())
        {
            Ok(())
        } else {
            Err(format!("{} + {}", root.len(), own.len()))
        }
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", daemon.log()));
    let listen = daemon.addr.to_string();

    // No credentials, wrong ones: one line, nothing else, exit 1.
    for (env, says) in [
        (
            vec![],
            "requires credentials (401): set CWATCH_BASIC_AUTH=user:password",
        ),
        (
            vec![("CWATCH_BASIC_AUTH", "prometheus:guess")],
            "refused the credentials in CWATCH_BASIC_AUTH (401)",
        ),
    ] {
        let (code, stdout, stderr) = ls_as_nobody(&bin, &listen, &env);
        assert_eq!(code, 1, "{stderr}");
        assert!(stdout.is_empty(), "nothing printed: {stdout}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
    }
    // The right ones: the daemon's view, every owner included.
    let (code, stdout, stderr) =
        ls_as_nobody(&bin, &listen, &[("CWATCH_BASIC_AUTH", "prometheus:s3cret")]);
    assert_eq!(code, 0, "{stderr}");
    let root = to_port(&stdout, root_port);
    assert_eq!(root.len(), 5);
    assert!(
        root.iter()
            .all(|s| s["pid"] == root_client.pid && s["fd"].is_number())
    );
    assert_eq!(to_port(&stdout, own_port).len(), 3);
    drop(daemon);

    // No daemon: the kernel's view as nobody sees it.
    let nowhere = format!("127.0.0.1:{}", free_port().unwrap());
    let (code, stdout, stderr) = ls_as_nobody(&bin, &nowhere, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("no daemon answers"), "{stderr}");
    let root = to_port(&stdout, root_port);
    let own = to_port(&stdout, own_port);
    assert_eq!(
        root.len(),
        ss_to_port(root_port).len(),
        "every socket, as ss shows it"
    );
    assert_eq!((root.len(), own.len()), (5, 3));
    assert!(
        root.iter()
            .all(|s| s["pid"].is_null() && s["holders"] == serde_json::json!([])),
        "root's process is not nobody's to inspect: {root:?}"
    );
    assert!(
        own.iter()
            .all(|s| s["pid"] == own_client.pid && s["comm"] == "ownleak" && s["fd"].is_number()),
        "nobody's own process is: {own:?}"
    );
    let all: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
    let unowned = all.iter().filter(|s| s["pid"].is_null()).count();
    assert!(
        stderr.contains(&format!(
            "only the owners this user may inspect are shown ({unowned} of {} sockets have no owner shown)",
            all.len()
        )),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
