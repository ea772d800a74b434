//! TLS for the git and REST endpoints (rustls): certificates from files, or a self-signed setup
//! for localhost generated into the data directory on first start:
//!
//! ```text
//! <data>/tls/ca.pem          a private CA certificate: point GIT_SSL_CAINFO at it
//! <data>/tls/cert.pem        the server certificate (localhost, 127.0.0.1, ::1), signed by that CA
//! <data>/tls/key.pem         the server's private key (mode 0600)
//! ```
//!
//! ALPN offers h2 and http/1.1.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsSource;

/// Why TLS cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{action} {path}: {message}")]
    File {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Certificate generation failed.
    #[error("generating the self-signed certificate: {0}")]
    Generate(String),
    /// rustls refused the certificate and key.
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The certificate files of the self-signed setup in `data`.
pub fn self_signed_paths(data: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let dir = data.join("tls");
    (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    )
}

fn write(path: &Path, contents: &str, private: bool) -> Result<(), TlsError> {
    let err = |message: String| TlsError::File {
        action: "write",
        path: path.to_owned(),
        message,
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut f = opts.open(path).map_err(|e| err(e.to_string()))?;
    std::io::Write::write_all(&mut f, contents.as_bytes()).map_err(|e| err(e.to_string()))?;
    f.sync_all().map_err(|e| err(e.to_string()))
}

/// Create the self-signed CA and server certificate in `data` unless they exist.
pub fn ensure_self_signed(data: &Path) -> Result<(PathBuf, PathBuf, PathBuf), TlsError> {
    let (ca_path, cert_path, key_path) = self_signed_paths(data);
    if ca_path.exists() && cert_path.exists() && key_path.exists() {
        return Ok((ca_path, cert_path, key_path));
    }
    let dir = data.join("tls");
    std::fs::create_dir_all(&dir).map_err(|e| TlsError::File {
        action: "create",
        path: dir.clone(),
        message: e.to_string(),
    })?;
    let generate = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(generate)?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "codestorage local CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_key = rcgen::KeyPair::generate().map_err(generate)?;
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).map_err(generate)?;

    let mut params = rcgen::CertificateParams::new(vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ])
    .map_err(generate)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    let key = rcgen::KeyPair::generate().map_err(generate)?;
    let cert = params.signed_by(&key, &ca).map_err(generate)?;

    write(&key_path, &key.serialize_pem(), true)?;
    write(&cert_path, &cert.pem(), false)?;
    write(&ca_path, &ca.pem(), false)?;
    Ok((ca_path, cert_path, key_path))
}

/// Build the rustls server configuration. For the self-signed setup, also the CA file clients
/// should trust.
pub fn server_config(
    source: &TlsSource,
    data: &Path,
) -> Result<(Arc<rustls::ServerConfig>, Option<PathBuf>), TlsError> {
    let (cert_path, key_path, ca) = match source {
        TlsSource::Files { cert, key } => (cert.clone(), key.clone(), None),
        TlsSource::SelfSigned => {
            let (ca, cert, key) = ensure_self_signed(data)?;
            (cert, key, Some(ca))
        }
    };
    let read_err = |path: &Path, e: rustls_pki_types::pem::Error| TlsError::File {
        action: "read",
        path: path.to_owned(),
        message: e.to_string(),
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .map_err(|e| read_err(&cert_path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| read_err(&cert_path, e))?;
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| read_err(&key_path, e))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((Arc::new(config), ca))
}
