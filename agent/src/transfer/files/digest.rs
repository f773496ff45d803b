//! The checksums both sides compute: SHA-256 of every block, and a file
//! digest over the sequence of pieces (see `FileEnd.digest` in
//! files.proto), so that a missing, extra or reordered piece is caught as
//! surely as a corrupted one.

use ring::digest::{Context, SHA256};

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The running digest of one file's pieces.
pub struct FileDigest(Context);

impl std::fmt::Debug for FileDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileDigest")
    }
}

impl Default for FileDigest {
    fn default() -> Self {
        FileDigest(Context::new(&SHA256))
    }
}

impl FileDigest {
    /// A data (or same) block at `offset`, `length` bytes, with its hash.
    pub fn block(&mut self, offset: u64, length: u64, sha256: &[u8]) {
        self.0.update(b"D");
        self.0.update(&offset.to_be_bytes());
        self.0.update(&length.to_be_bytes());
        self.0.update(sha256);
    }

    /// A run of blocks holding no data.
    pub fn hole(&mut self, offset: u64, length: u64) {
        self.0.update(b"H");
        self.0.update(&offset.to_be_bytes());
        self.0.update(&length.to_be_bytes());
    }

    pub fn finish(mut self, size: u64) -> Vec<u8> {
        self.0.update(b"E");
        self.0.update(&size.to_be_bytes());
        self.0.finish().as_ref().to_vec()
    }
}
