//! How clients trust lab's servers, and the TLS facts both sides share: the ALPN
//! protocols, the one crypto provider (ring), and certificate pins.
//!
//! A client trusts a server by the SHA-256 of its leaf certificate (the pin a browser
//! uses for `serverCertificateHashes`), by a CA or certificate file, or, on request, not
//! at all. Every client config honours `SSLKEYLOGFILE`, so captures can be decrypted.
//! Generating and loading server certificates is the servers' business
//! (`lab_servers::tls`).

use anyhow::{Context, Result, bail};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;

/// ALPN for HTTP/1.1 over TLS.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";
/// ALPN for HTTP/2 over TLS.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN for HTTP/3, which WebTransport rides on.
pub const ALPN_H3: &[u8] = b"h3";
/// ALPN of lab's raw QUIC approach (no HTTP/3): lab's own protocol.
pub const ALPN_QUIC: &[u8] = b"lab-quic";

/// The one crypto provider of the binary.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// SHA-256 of some bytes.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// How a client decides to trust a server.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Accept only a leaf certificate with this SHA-256 (like `serverCertificateHashes`).
    Pin([u8; 32]),
    /// Verify against these roots (a CA, or the server's own self-signed certificate).
    Roots(Vec<CertificateDer<'static>>),
    /// Accept any certificate. Only for poking at servers by hand.
    Insecure,
}

impl Trust {
    /// Builds the trust from a client's flags: `--cert-hash`, `--ca`, `--insecure`.
    pub fn from_args(cert_hash: Option<&str>, ca: Option<&Path>, insecure: bool) -> Result<Self> {
        match (cert_hash, ca, insecure) {
            (Some(h), None, false) => Ok(Self::Pin(parse_pin(h)?)),
            (None, Some(p), false) => {
                let pem = std::fs::read(p)
                    .with_context(|| format!("failed to read CA file {}", p.display()))?;
                let roots = CertificateDer::pem_slice_iter(&pem)
                    .collect::<Result<Vec<_>, _>>()
                    .with_context(|| {
                        format!("failed to parse PEM certificates in {}", p.display())
                    })?;
                if roots.is_empty() {
                    bail!("{} holds no PEM certificate", p.display());
                }
                Ok(Self::Roots(roots))
            }
            (None, None, true) => Ok(Self::Insecure),
            (None, None, false) => bail!(
                "no way to trust the server: pass --cert-hash HEX (printed by 'lab serve' at start), \
                 --ca FILE (the server's cert.pem), or --insecure"
            ),
            _ => bail!("--cert-hash, --ca and --insecure exclude each other: give one"),
        }
    }

    /// A client config for HTTP/1.1 over TLS.
    pub fn http1_client_config(&self) -> Result<rustls::ClientConfig> {
        self.client_config(false, ALPN_HTTP1)
    }

    /// A client config for HTTP/2 over TLS (ALPN `h2`).
    pub fn h2_client_config(&self) -> Result<rustls::ClientConfig> {
        self.client_config(false, ALPN_H2)
    }

    /// A client config for WebTransport (TLS 1.3, ALPN `h3`).
    pub fn h3_client_config(&self) -> Result<rustls::ClientConfig> {
        self.client_config(true, ALPN_H3)
    }

    /// A client config for raw QUIC (TLS 1.3, ALPN `lab-quic`), with early data on: a
    /// connection that resumes a session of the same config sends 0-RTT data.
    pub fn quic_client_config(&self) -> Result<rustls::ClientConfig> {
        let mut cfg = self.client_config(true, ALPN_QUIC)?;
        cfg.enable_early_data = true;
        Ok(cfg)
    }

    fn client_config(&self, tls13_only: bool, alpn: &[u8]) -> Result<rustls::ClientConfig> {
        let provider = provider();
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone());
        let builder = if tls13_only {
            builder.with_protocol_versions(&[&rustls::version::TLS13])
        } else {
            builder.with_safe_default_protocol_versions()
        }
        .context("no TLS protocol version is available")?;
        let mut cfg = match self {
            Self::Roots(roots) => {
                let mut store = rustls::RootCertStore::empty();
                for r in roots {
                    store
                        .add(r.clone())
                        .context("a certificate in the CA file is not a valid trust anchor")?;
                }
                builder.with_root_certificates(store).with_no_client_auth()
            }
            Self::Pin(pin) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinVerifier {
                    pin: Some(*pin),
                    algs: provider.signature_verification_algorithms,
                }))
                .with_no_client_auth(),
            Self::Insecure => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinVerifier {
                    pin: None,
                    algs: provider.signature_verification_algorithms,
                }))
                .with_no_client_auth(),
        };
        cfg.alpn_protocols = vec![alpn.to_vec()];
        cfg.key_log = Arc::new(rustls::KeyLogFile::new());
        Ok(cfg)
    }
}

/// Parses a SHA-256 pin written as hex, with or without `:` separators.
pub fn parse_pin(s: &str) -> Result<[u8; 32]> {
    let clean: String = s.chars().filter(|c| *c != ':').collect();
    let bytes =
        hex::decode(&clean).with_context(|| format!("certificate hash '{s}' is not hex"))?;
    bytes.try_into().map_err(|b: Vec<u8>| {
        anyhow::anyhow!(
            "certificate hash has {} bytes; a SHA-256 hash has 32 (64 hex digits)",
            b.len()
        )
    })
}

/// Accepts a server whose leaf certificate hashes to `pin` (or any, when `pin` is `None`),
/// and still checks the handshake signatures, so the peer must hold the key.
#[derive(Debug)]
struct PinVerifier {
    pin: Option<[u8; 32]>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.pin {
            None => Ok(ServerCertVerified::assertion()),
            Some(pin) if sha256(end_entity) == pin => Ok(ServerCertVerified::assertion()),
            Some(_) => Err(rustls::Error::General(format!(
                "server certificate sha256 {} does not match the pinned hash",
                hex::encode(sha256(end_entity))
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_inputs_are_named() {
        let e = Trust::from_args(None, None, false).unwrap_err();
        assert!(format!("{e:#}").contains("--cert-hash"));
        let e = Trust::from_args(None, Some(Path::new("/nonexistent/ca.pem")), false).unwrap_err();
        assert!(format!("{e:#}").contains("/nonexistent/ca.pem"));
        let e = parse_pin("abcd").unwrap_err();
        assert!(format!("{e:#}").contains("32"));
        let e = parse_pin("zz").unwrap_err();
        assert!(format!("{e:#}").contains("not hex"));
        let pin = "ab:".repeat(31) + "ab";
        assert_eq!(parse_pin(&pin).unwrap(), [0xab; 32]);
    }

    #[test]
    fn every_trust_builds_both_client_configs() {
        for t in [Trust::Pin([7; 32]), Trust::Insecure] {
            assert_eq!(
                t.http1_client_config().unwrap().alpn_protocols,
                [ALPN_HTTP1]
            );
            assert_eq!(t.h3_client_config().unwrap().alpn_protocols, [ALPN_H3]);
            assert_eq!(t.h2_client_config().unwrap().alpn_protocols, [ALPN_H2]);
        }
    }
}
