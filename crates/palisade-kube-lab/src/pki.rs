//! The control plane's certificates: one CA per control plane, serving certificates
//! for etcd and kube-apiserver (SANs on loopback), and client certificates whose
//! subject is the Kubernetes identity (CN = user name, O = group), as kube-apiserver's
//! x509 authenticator reads them. Keys are ECDSA P-256 (rcgen's default).

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::Error;

/// A private key and its certificate, both PEM.
#[derive(Debug, Clone)]
pub struct KeyAndCert {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// The private key (PKCS#8 PEM).
    pub key_pem: String,
}

/// A certificate authority that signs every certificate of one control plane.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

fn pki(what: &str) -> impl FnOnce(rcgen::Error) -> Error + '_ {
    move |source| Error::Pki {
        what: what.to_string(),
        source,
    }
}

impl Ca {
    /// A new self-signed CA named `cn`.
    pub fn new(cn: &str) -> Result<Self, Error> {
        let key = KeyPair::generate().map_err(pki("CA key"))?;
        let params = Self::params(cn);
        let cert = params.self_signed(&key).map_err(pki("CA certificate"))?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA `cn` from its saved certificate and key (see [`Ca::key_pem`]): the
    /// issuer is rebuilt from the same subject and key, so what it signs chains to
    /// the saved certificate (a lab signs node identities after `lab up`).
    pub fn from_pem(cn: &str, cert_pem: &str, key_pem: &str) -> Result<Self, Error> {
        let key = KeyPair::from_pem(key_pem).map_err(pki("CA key"))?;
        Ok(Self {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            issuer: Issuer::new(Self::params(cn), key),
        })
    }

    fn params(cn: &str) -> CertificateParams {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params
    }

    /// The CA's private key (PKCS#8 PEM), to save beside its certificate.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The CA certificate (PEM), to trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A serving certificate for `cn`, valid for `ips` and `dns` names. It also
    /// allows client use, as etcd's serving certificate must for its own health checks.
    pub fn serving(&self, cn: &str, ips: &[IpAddr], dns: &[&str]) -> Result<KeyAndCert, Error> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = ips.iter().map(|ip| SanType::IpAddress(*ip)).collect();
        for name in dns {
            let name = (*name).try_into().map_err(pki(name))?;
            params.subject_alt_names.push(SanType::DnsName(name));
        }
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.sign(cn, params)
    }

    /// A client certificate for user `user` in `group` (at most one: the subject
    /// holds one O attribute).
    pub fn client(&self, user: &str, group: Option<&str>) -> Result<KeyAndCert, Error> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, user);
        if let Some(g) = group {
            params.distinguished_name.push(DnType::OrganizationName, g);
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(user, params)
    }

    fn sign(&self, what: &str, params: CertificateParams) -> Result<KeyAndCert, Error> {
        let key = KeyPair::generate().map_err(pki(what))?;
        let cert = params.signed_by(&key, &self.issuer).map_err(pki(what))?;
        Ok(KeyAndCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A service-account signing key: (private key PEM, public key PEM). kube-apiserver
/// signs tokens with the private key (ES256) and verifies them with the public one.
pub(crate) fn service_account_key() -> Result<(String, String), Error> {
    let key = KeyPair::generate().map_err(pki("service-account signing key"))?;
    Ok((key.serialize_pem(), key.public_key_pem()))
}
