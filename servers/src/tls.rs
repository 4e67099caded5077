//! TLS material for every client-facing server.
//!
//! Servers either generate a self-signed ECDSA P-256 certificate at start (valid for 13
//! days and one hour back-dated, so at most 14 days, which browsers require for
//! `serverCertificateHashes`), or load PEM files. How clients trust them is in
//! [`lab_codec::trust`], which servers and clients share.
//!
//! Every config uses the one crypto provider of the binary, ring, and honours
//! `SSLKEYLOGFILE` so captures can be decrypted.

use anyhow::{Context, Result, bail};
use lab_codec::trust::{ALPN_H2, ALPN_H3, ALPN_HTTP1, ALPN_QUIC, provider, sha256};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// How long a generated certificate is valid: 13 days, plus the hour it is back-dated.
pub const GENERATED_VALIDITY: Duration = Duration::from_secs(13 * 24 * 3600);

/// A certificate chain and its private key, as DER, with the leaf's SHA-256.
#[derive(Debug)]
pub struct CertKey {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// SHA-256 of the leaf certificate's DER, the value browsers pin.
    pub sha256: [u8; 32],
    /// The chain as PEM, for writing out.
    pub cert_pem: String,
    /// The key as PEM, for writing out (mode 0600).
    pub key_pem: String,
}

impl Clone for CertKey {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            sha256: self.sha256,
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
        }
    }
}

impl CertKey {
    /// Generates a self-signed ECDSA P-256 certificate for `names` (DNS names or IPs),
    /// plus `localhost`, `127.0.0.1` and `::1`.
    pub fn generate(names: &[String]) -> Result<Self> {
        let mut sans: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
        for n in names {
            if !sans.contains(n) {
                sans.push(n.clone());
            }
        }
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .context("failed to generate an ECDSA P-256 key")?;
        let mut params = rcgen::CertificateParams::new(sans)
            .context("invalid subject alternative name for the certificate")?;
        let now = std::time::SystemTime::now();
        let not_before = now - Duration::from_secs(3600);
        params.not_before = not_before.into();
        params.not_after = (now + GENERATED_VALIDITY).into();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "lab self-signed");
        let cert = params
            .self_signed(&key)
            .context("failed to self-sign the certificate")?;
        let der = cert.der().clone();
        Ok(Self {
            sha256: sha256(&der),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            chain: vec![der],
            key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        })
    }

    /// Loads a PEM certificate chain and a PEM private key.
    pub fn load(cert: &Path, key: &Path) -> Result<Self> {
        let cert_pem = std::fs::read_to_string(cert)
            .with_context(|| format!("failed to read certificate file {}", cert.display()))?;
        let key_pem = std::fs::read_to_string(key)
            .with_context(|| format!("failed to read private key file {}", key.display()))?;
        Self::from_pem(
            cert_pem,
            key_pem,
            &cert.display().to_string(),
            &key.display().to_string(),
        )
    }

    /// A certificate chain and key from their PEM text; `cert_from` and `key_from` say
    /// where they came from, for the errors.
    pub fn from_pem(
        cert_pem: String,
        key_pem: String,
        cert_from: &str,
        key_from: &str,
    ) -> Result<Self> {
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("failed to parse PEM certificates in {cert_from}"))?;
        if chain.is_empty() {
            bail!(
                "{cert_from} holds no PEM certificate (expected a '-----BEGIN CERTIFICATE-----' block)"
            );
        }
        let key_der = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).with_context(|| {
            format!("failed to read a PEM private key (PKCS#8, SEC1 or PKCS#1) from {key_from}")
        })?;
        Ok(Self {
            sha256: sha256(&chain[0]),
            chain,
            key: key_der,
            cert_pem,
            key_pem,
        })
    }

    /// The certificate from `--cert`/`--key`, or a generated one when both are absent.
    pub fn from_args(cert: Option<&Path>, key: Option<&Path>, names: &[String]) -> Result<Self> {
        match (cert, key) {
            (Some(c), Some(k)) => Self::load(c, k),
            (None, None) => Self::generate(names),
            _ => bail!(
                "--cert and --key go together: give both, or neither to generate a certificate"
            ),
        }
    }

    /// The pin as lowercase hex.
    pub fn sha256_hex(&self) -> String {
        hex::encode(self.sha256)
    }

    /// A server config for HTTP/1.1 over TLS 1.2 or 1.3.
    pub fn http1_server_config(&self) -> Result<rustls::ServerConfig> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("no TLS protocol version is available")?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .context("the certificate and private key do not match or are unsupported")?;
        cfg.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
        cfg.key_log = Arc::new(rustls::KeyLogFile::new());
        Ok(cfg)
    }

    /// A server config for HTTP/2 over TLS 1.2 or 1.3, ALPN `h2`.
    pub fn h2_server_config(&self) -> Result<rustls::ServerConfig> {
        let mut cfg = self.http1_server_config()?;
        cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(cfg)
    }

    /// A server config for HTTP/3 and WebTransport: TLS 1.3 only, ALPN `h3`.
    pub fn h3_server_config(&self) -> Result<rustls::ServerConfig> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .context("TLS 1.3 is not available")?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .context("the certificate and private key do not match or are unsupported")?;
        cfg.alpn_protocols = vec![ALPN_H3.to_vec()];
        cfg.key_log = Arc::new(rustls::KeyLogFile::new());
        Ok(cfg)
    }

    /// A server config for raw QUIC: TLS 1.3 only, ALPN `lab-quic`, 0-RTT accepted
    /// (QUIC requires the largest early-data size, or none).
    pub fn quic_server_config(&self) -> Result<rustls::ServerConfig> {
        let mut cfg = self.h3_server_config()?;
        cfg.alpn_protocols = vec![ALPN_QUIC.to_vec()];
        cfg.max_early_data_size = u32::MAX;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_cert_is_p256_and_short_lived() {
        let ck = CertKey::generate(&["198.18.0.2".into()]).unwrap();
        assert_eq!(ck.sha256, sha256(&ck.chain[0]));
        assert!(ck.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(ck.key_pem.contains("PRIVATE KEY"));
        // Both configs accept it.
        ck.http1_server_config().unwrap();
        ck.h2_server_config().unwrap();
        ck.h3_server_config().unwrap();
    }

    #[test]
    fn generated_pem_loads_back() {
        let dir = std::env::temp_dir().join(format!("lab-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ck = CertKey::generate(&[]).unwrap();
        std::fs::write(dir.join("cert.pem"), &ck.cert_pem).unwrap();
        std::fs::write(dir.join("key.pem"), &ck.key_pem).unwrap();
        let back = CertKey::load(&dir.join("cert.pem"), &dir.join("key.pem")).unwrap();
        assert_eq!(back.sha256, ck.sha256);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_inputs_are_named() {
        let e = CertKey::from_args(Some(Path::new("/nonexistent/c.pem")), None, &[]).unwrap_err();
        assert!(format!("{e:#}").contains("--cert and --key go together"));
        let e = CertKey::load(Path::new("/nonexistent/c.pem"), Path::new("/x")).unwrap_err();
        assert!(format!("{e:#}").contains("/nonexistent/c.pem"));
    }
}
