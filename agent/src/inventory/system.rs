//! Host-wide facts: the host's IP addresses and the disk that holds the
//! accounts.
//!
//! Reads only; the agent runs inside the host's network namespace, so the
//! addresses seen here are the host's.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Why a host fact could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    #[error("cannot list the network interfaces' addresses")]
    Addresses(#[source] nix::Error),
    #[error("cannot read the disk usage of {path}")]
    Disk {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
}

/// Every address of the host worth reporting, sorted and without
/// duplicates, as plain strings without prefix length.
pub fn host_addresses() -> Result<Vec<String>, SystemError> {
    let interfaces = nix::ifaddrs::getifaddrs().map_err(SystemError::Addresses)?;
    let addresses = interfaces.filter_map(|interface| {
        let address = interface.address?;
        if let Some(v4) = address.as_sockaddr_in() {
            Some(IpAddr::V4(v4.ip()))
        } else {
            address.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
        }
    });
    Ok(reportable_addresses(addresses))
}

/// Keeps the addresses another host could use: not loopback, not
/// unspecified, and not IPv6 link-local (`fe80::/10`, generated on every
/// interface and meaningless without an interface scope). IPv4-mapped IPv6
/// addresses are shown as IPv4.
pub fn reportable_addresses(addresses: impl IntoIterator<Item = IpAddr>) -> Vec<String> {
    let mut kept: Vec<IpAddr> = addresses
        .into_iter()
        .map(|address| address.to_canonical())
        .filter(|address| {
            !address.is_loopback()
                && !address.is_unspecified()
                && !matches!(address, IpAddr::V6(v6) if v6.is_unicast_link_local())
        })
        .collect();
    kept.sort();
    kept.dedup();
    kept.into_iter()
        .map(|address| address.to_string())
        .collect()
}

/// Size and free space of a filesystem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskUsage {
    pub total_bytes: u64,
    /// Space available to unprivileged users (not counting the part reserved
    /// for root), which is what accounts can use.
    pub free_bytes: u64,
}

/// The usage of the filesystem holding `path`.
pub fn disk_usage(path: &Path) -> Result<DiskUsage, SystemError> {
    let stats = nix::sys::statvfs::statvfs(path).map_err(|source| SystemError::Disk {
        path: path.to_owned(),
        source,
    })?;
    // c_ulong and fsblkcnt_t are u64 only on 64-bit targets.
    #[allow(clippy::useless_conversion)]
    let (fragment, blocks, available) = (
        u64::from(stats.fragment_size()),
        u64::from(stats.blocks()),
        u64::from(stats.blocks_available()),
    );
    Ok(DiskUsage {
        total_bytes: blocks.saturating_mul(fragment),
        free_bytes: available.saturating_mul(fragment),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("test address")
    }

    #[test]
    fn loopback_link_local_and_duplicates_are_left_out() {
        let found = reportable_addresses([
            ip("127.0.0.1"),
            ip("::1"),
            ip("192.0.2.11"),
            ip("fe80::1"),
            ip("2001:db8::11"),
            ip("192.0.2.11"),
            ip("10.0.0.1"),
            ip("0.0.0.0"),
        ]);
        assert_eq!(found, ["10.0.0.1", "192.0.2.11", "2001:db8::11"]);
    }

    #[test]
    fn addresses_are_written_without_prefix_and_mapped_v4_as_v4() {
        let found = reportable_addresses([ip("::ffff:192.0.2.12"), ip("2001:db8:0:0::1")]);
        assert_eq!(found, ["192.0.2.12", "2001:db8::1"]);
    }

    #[test]
    fn this_host_has_readable_addresses_and_disk() {
        host_addresses().expect("getifaddrs");
        let usage = disk_usage(&std::env::temp_dir()).expect("statvfs");
        assert!(usage.total_bytes >= usage.free_bytes);
        assert!(usage.total_bytes > 0);
    }
}
