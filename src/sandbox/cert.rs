//! The sandbox's own certificate authority, so the Auth0 SDKs (which speak
//! HTTPS only) can talk to `serve --sandbox` unchanged: a CA and a
//! certificate for `localhost` and `127.0.0.1`, made once in a directory and
//! reused, so the CA a client was told to trust stays valid across restarts.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

use crate::tls::TlsFiles;

/// Where `serve --sandbox` keeps its certificates, below the working
/// directory.
pub const DIR: &str = ".tollgate/sandbox-tls";

/// The files: the server's certificate and key, and the CA to trust.
pub struct SandboxCerts {
    pub files: TlsFiles,
    pub ca: PathBuf,
}

/// The certificates in `dir`, made there first if any is missing.
pub fn ensure(dir: &Path) -> anyhow::Result<SandboxCerts> {
    let ca = dir.join("ca.pem");
    let files = TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        client_ca: None,
    };
    if ![&ca, &files.cert, &files.key].iter().all(|p| p.is_file()) {
        make(dir, &ca, &files)?;
    }
    Ok(SandboxCerts { files, ca })
}

fn make(dir: &Path, ca_path: &Path, files: &TlsFiles) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "tollgate sandbox CA");
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    leaf.distinguished_name
        .push(DnType::CommonName, "tollgate sandbox");
    let cert = leaf.signed_by(&key, &ca)?;
    let write = |path: &Path, text: String| {
        std::fs::write(path, text)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
    };
    write(ca_path, ca.pem())?;
    write(&files.cert, cert.pem())?;
    write(&files.key, key.serialize_pem())?;
    // The server's key is for this user only.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| anyhow::anyhow!("cannot restrict {}: {e}", files.key.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_are_made_once_and_load() {
        let dir = tempfile::tempdir().expect("dir");
        let first = ensure(dir.path()).expect("made");
        let ca = std::fs::read_to_string(&first.ca).expect("ca");
        assert!(ca.contains("BEGIN CERTIFICATE"));
        crate::tls::ServerTls::load(first.files.clone()).expect("loads");
        let again = ensure(dir.path()).expect("reused");
        assert_eq!(
            std::fs::read_to_string(&again.ca).expect("ca"),
            ca,
            "the same CA"
        );
    }
}
