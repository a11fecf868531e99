//! `cwatch ls --stacks`: the site that opened each socket as a last column,
//! and the "CLOSE_WAIT by site" summary beside those by peer and process.
//! Pure text from the API's objects, like [`super::ls_render`].
use crate::{
    http::wire::{ApiSocket, SiteCount},
    text::for_terminal,
};

/// A row (or the header) of `ls_render` with the SITE column added.
pub fn with_site(line: &str, site: &str) -> String {
    format!("{}  {}\n", line.trim_end(), for_terminal(site))
}

/// The site column of `sock`: its site, or `-` when none is known.
pub fn site_of(sock: &ApiSocket) -> &str {
    sock.site.as_deref().unwrap_or("-")
}

/// "CLOSE_WAIT by site:" and one line per site, biggest first; empty when
/// the daemon counted none.
pub fn by_site(sites: &[SiteCount]) -> String {
    if sites.is_empty() {
        return String::new();
    }
    let mut sorted: Vec<&SiteCount> = sites.iter().collect();
    sorted.sort_by(|a, b| b.sockets.cmp(&a.sockets).then_with(|| a.site.cmp(&b.site)));
    let mut out = String::from("\nCLOSE_WAIT by site:\n");
    for s in sorted {
        out += &format!(
            "{:>8} {:<40} ({} leaked)\n",
            s.sockets,
            for_terminal(&s.site),
            s.leaked
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sites_print_biggest_first_and_rows_gain_a_column() {
        let text = by_site(&[
            SiteCount {
                site: "[unknown]".into(),
                sockets: 1,
                leaked: 1,
            },
            SiteCount {
                site: "open_backend_connection (leak.c:12) ← worker_handle".into(),
                sockets: 3,
                leaked: 2,
            },
        ]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], "CLOSE_WAIT by site:");
        assert!(lines[2].contains("open_backend_connection") && lines[2].contains("(2 leaked)"));
        assert!(lines[3].contains("[unknown]"));
        assert_eq!(by_site(&[]), "");
        assert_eq!(with_site("a   b   \n", "f\x1b"), "a   b  f\\x1b\n");
    }
}
