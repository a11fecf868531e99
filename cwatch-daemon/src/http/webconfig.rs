/*!
`--web.config.file`: the Prometheus exporter-toolkit web configuration
(YAML), so a Prometheus setup reuses the file it has:

```yaml
tls_server_config:
  cert_file: /etc/cwatch/tls.crt     # relative paths: from this file's directory
  key_file: /etc/cwatch/tls.key
  client_auth_type: RequireAndVerifyClientCert   # optional, with client_ca_file
  client_ca_file: /etc/cwatch/ca.crt
  min_version: TLS12                 # optional: TLS12 (default) or TLS13
basic_auth_users:
  prometheus: $2y$10$...             # bcrypt hash (htpasswd -nBC 10 "" | tr -d ':')
```

Keys the toolkit has but cwatch does not implement (cipher_suites,
curve_preferences, http_server_config, ...) are refused by name rather than
silently ignored.
*/
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    ServerConfig,
    server::{WebPkiClientVerifier, danger::ClientCertVerifier},
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebFile {
    tls_server_config: Option<TlsFile>,
    #[serde(default)]
    basic_auth_users: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert_file: String,
    key_file: String,
    client_auth_type: Option<String>,
    client_ca_file: Option<String>,
    min_version: Option<String>,
}

/// The endpoint's security settings, ready to use.
#[derive(Clone, Default)]
pub struct WebSecurity {
    pub tls: Option<Arc<ServerConfig>>,
    /// user → bcrypt hash; empty: no authentication.
    pub users: BTreeMap<String, String>,
}

impl std::fmt::Debug for WebSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSecurity")
            .field("tls", &self.tls.is_some())
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// One line naming the file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("web config file {path}: {reason}")]
pub struct WebConfigError {
    pub path: String,
    pub reason: String,
}

/// Loads `path` (`None`: plain HTTP without authentication).
pub fn load(path: Option<&Path>) -> Result<WebSecurity, WebConfigError> {
    let Some(path) = path else {
        return Ok(WebSecurity::default());
    };
    let err = |reason: String| WebConfigError {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    parse(&text, path.parent().unwrap_or(Path::new("."))).map_err(err)
}

/// The web config's text (relative paths from `base`): apart from the
/// reading so that hostile files are tested without any.
pub fn parse(text: &str, base: &Path) -> Result<WebSecurity, String> {
    let file: WebFile = if text.trim().is_empty() {
        WebFile::default()
    } else {
        serde_yaml::from_str(text).map_err(|e| e.to_string().replace('\n', " "))?
    };
    for (user, hash) in &file.basic_auth_users {
        if hash.parse::<bcrypt::HashParts>().is_err() {
            return Err(format!(
                "basic_auth_users.{user}: not a bcrypt hash (make one with `htpasswd -nBC 10 \"\" | tr -d ':'`)"
            ));
        }
    }
    let tls = match file.tls_server_config {
        Some(t) => Some(Arc::new(tls_config(base, &t)?)),
        None => None,
    };
    Ok(WebSecurity {
        tls,
        users: file.basic_auth_users,
    })
}

fn resolve(base: &Path, file: &str) -> PathBuf {
    let p = Path::new(file);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn tls_config(base: &Path, t: &TlsFile) -> Result<ServerConfig, String> {
    let cert_path = resolve(base, &t.cert_file);
    let key_path = resolve(base, &t.key_file);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| format!("cert_file {}: {e}", cert_path.display()))?;
    if certs.is_empty() {
        return Err(format!("cert_file {}: no certificate", cert_path.display()));
    }
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| format!("key_file {}: {e}", key_path.display()))?;
    let versions: &[&rustls::SupportedProtocolVersion] = match t.min_version.as_deref() {
        None | Some("TLS12") => &[&rustls::version::TLS13, &rustls::version::TLS12],
        Some("TLS13") => &[&rustls::version::TLS13],
        Some(other) => return Err(format!("min_version {other:?}: use TLS12 or TLS13")),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?;
    let verifier: Option<Arc<dyn ClientCertVerifier>> = match t.client_auth_type.as_deref() {
        None | Some("NoClientCert") => None,
        Some("RequireAndVerifyClientCert") => {
            let ca = t
                .client_ca_file
                .as_deref()
                .ok_or("client_auth_type RequireAndVerifyClientCert needs client_ca_file")?;
            let ca_path = resolve(base, ca);
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(&ca_path)
                .map_err(|e| format!("client_ca_file {}: {e}", ca_path.display()))?
            {
                let cert =
                    cert.map_err(|e| format!("client_ca_file {}: {e}", ca_path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("client_ca_file: {e}"))?;
            }
            Some(
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| format!("client_ca_file: {e}"))?,
            )
        }
        Some(other) => {
            return Err(format!(
                "client_auth_type {other:?}: cwatch supports NoClientCert and RequireAndVerifyClientCert"
            ));
        }
    };
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("cert_file/key_file: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let dir = std::env::temp_dir().join(format!("cwatch-webcfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cases = [
            (
                "unknown.yml",
                "http_server_config:\n  http2: true\n",
                "http_server_config",
            ),
            (
                "hash.yml",
                "basic_auth_users:\n  bob: hunter2\n",
                "not a bcrypt hash",
            ),
            (
                "cert.yml",
                "tls_server_config:\n  cert_file: nope.crt\n  key_file: nope.key\n",
                "nope.crt",
            ),
            ("yaml.yml", "basic_auth_users: [\n", "web config file"),
        ];
        for (name, text, needle) in cases {
            let path = write(&dir, name, text);
            let err = load(Some(&path)).unwrap_err().to_string();
            assert!(err.starts_with("web config file "), "{err}");
            assert!(err.contains(needle), "{name}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
        let ok = write(
            &dir,
            "ok.yml",
            &format!(
                "basic_auth_users:\n  alice: {}\n",
                bcrypt::hash("s3cret", 4).unwrap()
            ),
        );
        let sec = load(Some(&ok)).unwrap();
        assert!(sec.tls.is_none());
        assert!(sec.users.contains_key("alice"));
        assert!(load(None).unwrap().users.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
