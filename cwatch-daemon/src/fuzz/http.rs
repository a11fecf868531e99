//! What arrives over HTTP or from the web config file: the YAML, the API's
//! query parameters, cursors, peer filters and the `Authorization` header.
use std::net::SocketAddr;

use proptest::prelude::*;

use super::{hostile_text, one_line};
use crate::http::{
    auth::decode_basic,
    query::{Cursor, SocketQuery},
    webconfig,
    wire::PeerFilter,
};

/// Near-valid web config documents.
fn web_yaml() -> impl Strategy<Value = String> {
    let user = (hostile_text(), hostile_text()).prop_map(|(u, h)| format!("  {u:?}: {h:?}"));
    let hash = Just("  prometheus: $2y$10$V2RmZ2wKC7S2gvJ7LwKuWe0.4DCI8gRc0F0rGkO2mjIF9KBNyKQxW");
    let tls_key = proptest::sample::select(
        &[
            "cert_file",
            "key_file",
            "client_auth_type",
            "client_ca_file",
            "min_version",
            "cipher_suites",
        ][..],
    );
    let tls = proptest::collection::vec(
        (tls_key, hostile_text()).prop_map(|(k, v)| format!("  {k}: {v:?}")),
        0..5,
    );
    (
        proptest::collection::vec(
            prop_oneof![user.boxed(), hash.prop_map(String::from).boxed()],
            0..4,
        ),
        proptest::option::of(tls),
        proptest::option::of(hostile_text()),
    )
        .prop_map(|(users, tls, junk)| {
            let mut text = String::new();
            if !users.is_empty() {
                text += "basic_auth_users:\n";
                text += &users.join("\n");
                text.push('\n');
            }
            if let Some(tls) = tls {
                text += "tls_server_config:\n";
                text += &tls.join("\n");
                text.push('\n');
            }
            if let Some(junk) = junk {
                text += &junk;
            }
            text
        })
}

fn pairs() -> impl Strategy<Value = Vec<(String, String)>> {
    let key = prop_oneof![
        proptest::sample::select(&["leaked", "pid", "peer", "limit", "cursor"][..])
            .prop_map(String::from),
        hostile_text(),
    ];
    let value = prop_oneof![
        hostile_text(),
        any::<u64>().prop_map(|n| n.to_string()),
        (any::<u64>(), any::<u64>(), any::<bool>())
            .prop_map(|(a, b, d)| format!("{}{a:x}-{b:x}", if d { "d" } else { "" })),
        any::<SocketAddr>().prop_map(|a| a.to_string()),
    ];
    proptest::collection::vec((key, value), 0..6)
}

proptest! {
    #[test]
    fn web_configs_never_panic(text in prop_oneof![web_yaml(), hostile_text()]) {
        let base = std::path::Path::new("/nonexistent-cwatch-fuzz");
        if let Err(e) = webconfig::parse(&text, base) {
            one_line("web config", &e);
        }
    }

    #[test]
    fn api_queries_never_panic_and_refuse_in_one_line(pairs in pairs()) {
        match SocketQuery::from_pairs(&pairs) {
            Ok(q) => {
                if let Some(limit) = q.limit {
                    prop_assert!((1..=crate::http::query::MAX_LIMIT).contains(&limit));
                }
            }
            Err(e) => one_line("query", &e),
        }
    }

    #[test]
    fn cursors_mean_what_they_print(text in prop_oneof![
        hostile_text(),
        (any::<u64>(), any::<u64>(), any::<bool>())
            .prop_map(|(a, b, d)| format!("{}{a:x}-{b:x}", if d { "d" } else { "" })),
    ]) {
        match text.parse::<Cursor>() {
            Ok(c) => prop_assert_eq!(c.to_string().parse::<Cursor>(), Ok(c)),
            Err(e) => one_line("cursor", &e),
        }
    }

    #[test]
    fn peer_filters_match_what_they_name(text in prop_oneof![
        hostile_text(),
        any::<SocketAddr>().prop_map(|a| a.to_string()),
        any::<std::net::IpAddr>().prop_map(|a| a.to_string()),
    ]) {
        match PeerFilter::parse(&text) {
            Ok(p) => prop_assert!(p.matches(p.addr, p.port.unwrap_or(1))),
            Err(e) => one_line("peer", &e),
        }
    }

    #[test]
    fn authorization_headers_never_panic(value in prop_oneof![
        hostile_text(),
        hostile_text().prop_map(|t| format!("Basic {t}")),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(|b| {
            use base64::Engine as _;
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(b))
        }),
    ]) {
        if let Some((user, _)) = decode_basic(&value) {
            prop_assert!(!user.contains(':'), "the user name ends at the first colon");
        }
    }
}
