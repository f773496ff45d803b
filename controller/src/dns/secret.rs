//! The TSIG secret file: one line of base64, readable by its owner only.
//!
//! Kept apart from the code that uses the key so that the one rule about
//! its mode (the same as `ca.key`'s) is in one place; base64 is decoded
//! here rather than with a crate, for one line read at start.

use std::path::Path;

use super::DnsError;

/// Reads a TSIG secret: one line of base64 (what `keymgr -t`, `tsig-keygen`
/// and `pdnsutil generate-tsig-key` print as the secret), from a file only
/// its owner may read.
pub fn read_secret(path: &Path) -> Result<Vec<u8>, DnsError> {
    use std::os::unix::fs::PermissionsExt;
    let unreadable =
        |e: std::io::Error| DnsError::Config(format!("tsig_secret_file {}: {e}", path.display()));
    let mode = std::fs::metadata(path)
        .map_err(unreadable)?
        .permissions()
        .mode()
        & 0o7777;
    if mode & 0o077 != 0 {
        return Err(DnsError::SecretExposed {
            path: path.to_owned(),
            mode,
        });
    }
    let text = std::fs::read_to_string(path).map_err(unreadable)?;
    let secret = decode_base64(text.trim()).ok_or_else(|| {
        DnsError::Config(format!(
            "tsig_secret_file {}: not one line of base64 (the key's secret, as the DNS server's configuration holds it)",
            path.display()
        ))
    })?;
    if secret.len() < 16 {
        return Err(DnsError::Config(format!(
            "tsig_secret_file {}: a secret of {} bytes is too short; use 32 random bytes",
            path.display(),
            secret.len()
        )));
    }
    Ok(secret)
}

/// Standard base64 with padding (RFC 4648 section 4); `None` if malformed.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let bytes = text.as_bytes();
    if bytes.is_empty() || !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for (index, chunk) in bytes.chunks(4).enumerate() {
        let last = index == bytes.len() / 4 - 1;
        let padding = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if padding > 2 || (padding > 0 && !last) {
            return None;
        }
        let mut word = 0u32;
        for &c in &chunk[..4 - padding] {
            word = (word << 6) | value(c)?;
        }
        word <<= 6 * padding as u32;
        let decoded = [(word >> 16) as u8, (word >> 8) as u8, word as u8];
        out.extend_from_slice(&decoded[..3 - padding]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_secrets_decode_and_garbage_does_not() {
        assert_eq!(decode_base64("bmF2ZXR0ZQ=="), Some(b"navette".to_vec()));
        assert_eq!(decode_base64("bmF2ZXR0ZTE="), Some(b"navette1".to_vec()));
        assert_eq!(decode_base64("bmF2ZXR0ZTEy"), Some(b"navette12".to_vec()));
        for bad in ["", "abc", "ab=c", "a===", "bmF2=ZXR0", "bmF2ZXR0ZQ=!"] {
            assert_eq!(decode_base64(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_secret_file_others_can_read_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("navette-dns-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("tsig.key");
        std::fs::write(&path, "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n")?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
        let error = read_secret(&path)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            error.contains("0644") && error.contains("chmod 600"),
            "{error}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        assert_eq!(
            read_secret(&path)?,
            b"0123456789abcdef0123456789abcdef".to_vec()
        );
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
