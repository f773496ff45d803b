//! TSIG (RFC 8945) with HMAC-SHA256: signing requests and checking the
//! server's signature on every answer.
//!
//! Every message Navette sends to the platform's DNS is signed, queries as
//! well as updates, and an answer is believed only with a valid signature
//! over it and the request's MAC: a forged "done" to an update, or a forged
//! record set read before one, would otherwise make the controller switch
//! an account's names on a lie. The HMAC is `ring`'s, already what rustls
//! uses here.

use std::time::{SystemTime, UNIX_EPOCH};

use super::wire::{CLASS_ANY, Message, Name, Record, TYPE_TSIG, WireError, rcode, split_name};

/// The one algorithm offered: `hmac-sha256` (RFC 8945 section 6: MUST).
pub const ALGORITHM: &str = "hmac-sha256.";

/// How far apart the two clocks may be (RFC 8945 recommends 300 s).
pub const FUDGE_SECS: u16 = 300;

/// A shared TSIG key.
#[derive(Clone)]
pub struct TsigKey {
    /// The key's name, the same on the server (`navette.`).
    pub name: Name,
    key: ring::hmac::Key,
}

impl std::fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TsigKey")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Why an answer's signature was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TsigError {
    /// The server refused the request's signature (its TSIG error code).
    #[error("the server refused the request's TSIG signature: {}", rcode::name(*.0))]
    Refused(u16),
    /// The answer carries no TSIG record.
    #[error("the answer is not signed")]
    Unsigned,
    /// The answer's TSIG record does not verify.
    #[error("the answer's TSIG signature {0}")]
    Invalid(&'static str),
    #[error(transparent)]
    Wire(#[from] WireError),
}

impl TsigKey {
    pub fn new(name: Name, secret: &[u8]) -> TsigKey {
        TsigKey {
            name,
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret),
        }
    }

    /// The wire form of `message` signed at `now`, and the request MAC the
    /// answer's signature must cover.
    pub fn sign(
        &self,
        message: &Message,
        now: SystemTime,
    ) -> Result<(Vec<u8>, Vec<u8>), WireError> {
        let mut bytes = message.to_bytes()?;
        let time = unix_secs(now);
        let variables = self.variables(time, 0, &[]);
        let mut context = ring::hmac::Context::with_key(&self.key);
        context.update(&bytes);
        context.update(&variables);
        let mac = context.sign().as_ref().to_vec();
        let record = self.record(time, &mac, message.id);
        record.write(&mut bytes)?;
        bump_additional_count(&mut bytes, 1)?;
        Ok((bytes, mac))
    }

    /// Checks the TSIG record ending the answer `bytes` (parsed as
    /// `answer`) against the request's MAC, at `now`.
    pub fn verify(
        &self,
        bytes: &[u8],
        answer: &Message,
        request_mac: &[u8],
        now: SystemTime,
    ) -> Result<(), TsigError> {
        let (offset, record) = match (answer.tsig_offset, answer.additional.last()) {
            (Some(offset), Some(record)) if record.rtype == TYPE_TSIG => (offset, record),
            _ => return Err(TsigError::Unsigned),
        };
        let fields = TsigFields::parse(&record.rdata)?;
        if fields.error != 0 {
            return Err(TsigError::Refused(fields.error));
        }
        if record.owner != self.name.as_str() {
            return Err(TsigError::Invalid("names another key"));
        }
        if fields.algorithm != ALGORITHM {
            return Err(TsigError::Invalid("uses another algorithm"));
        }
        let mut signed = bytes
            .get(..offset)
            .ok_or(TsigError::Invalid("is outside the answer"))?
            .to_vec();
        bump_additional_count(&mut signed, -1)?;
        signed[..2].copy_from_slice(&fields.original_id.to_be_bytes());
        let request_mac_len = u16::try_from(request_mac.len())
            .map_err(|_| TsigError::Invalid("follows an oversized request MAC"))?;
        let mut input = Vec::with_capacity(signed.len() + 128);
        input.extend_from_slice(&request_mac_len.to_be_bytes());
        input.extend_from_slice(request_mac);
        input.extend_from_slice(&signed);
        input.extend_from_slice(&self.variables(fields.time, fields.error, fields.other));
        ring::hmac::verify(&self.key, &input, fields.mac)
            .map_err(|_| TsigError::Invalid("does not match the key"))?;
        let now = unix_secs(now);
        if now.abs_diff(fields.time) > u64::from(fields.fudge) {
            return Err(TsigError::Invalid(
                "is outside its time window (are the clocks of the controller and the DNS server apart?)",
            ));
        }
        Ok(())
    }

    /// The TSIG variables (RFC 8945 section 4.3.3) the MAC covers after
    /// the message.
    fn variables(&self, time: u64, error: u16, other: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        self.name.write(&mut out);
        out.extend_from_slice(&CLASS_ANY.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes());
        algorithm_name().write(&mut out);
        out.extend_from_slice(&time.to_be_bytes()[2..]);
        out.extend_from_slice(&FUDGE_SECS.to_be_bytes());
        out.extend_from_slice(&error.to_be_bytes());
        // Bounded by the 16-bit rdata length it was read from.
        out.extend_from_slice(&(other.len() as u16).to_be_bytes());
        out.extend_from_slice(other);
        out
    }

    fn record(&self, time: u64, mac: &[u8], original_id: u16) -> Record {
        let mut rdata = Vec::with_capacity(64);
        algorithm_name().write(&mut rdata);
        rdata.extend_from_slice(&time.to_be_bytes()[2..]);
        rdata.extend_from_slice(&FUDGE_SECS.to_be_bytes());
        // HMAC-SHA256: 32 bytes.
        rdata.extend_from_slice(&(mac.len() as u16).to_be_bytes());
        rdata.extend_from_slice(mac);
        rdata.extend_from_slice(&original_id.to_be_bytes());
        rdata.extend_from_slice(&0u16.to_be_bytes());
        rdata.extend_from_slice(&0u16.to_be_bytes());
        Record {
            owner: self.name.as_str().to_owned(),
            rtype: TYPE_TSIG,
            class: CLASS_ANY,
            ttl: 0,
            rdata,
        }
    }
}

fn algorithm_name() -> Name {
    // A constant that is a valid name.
    Name::parse(ALGORITHM).unwrap_or_else(|_| unreachable!("hmac-sha256. is a name"))
}

fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A TSIG record's fields after the algorithm name.
struct TsigFields<'a> {
    algorithm: String,
    time: u64,
    fudge: u16,
    mac: &'a [u8],
    original_id: u16,
    error: u16,
    other: &'a [u8],
}

impl<'a> TsigFields<'a> {
    fn parse(rdata: &'a [u8]) -> Result<TsigFields<'a>, WireError> {
        let (algorithm, rest) = split_name(rdata)?;
        let short = || WireError("TSIG record too short".into());
        let u16_at = |at: usize| -> Result<u16, WireError> {
            let b = rest.get(at..at + 2).ok_or_else(short)?;
            Ok(u16::from_be_bytes([b[0], b[1]]))
        };
        let time_bytes = rest.get(..6).ok_or_else(short)?;
        let mut time = [0u8; 8];
        time[2..].copy_from_slice(time_bytes);
        let fudge = u16_at(6)?;
        let mac_len = usize::from(u16_at(8)?);
        let mac = rest.get(10..10 + mac_len).ok_or_else(short)?;
        let after = 10 + mac_len;
        let original_id = u16_at(after)?;
        let error = u16_at(after + 2)?;
        let other_len = usize::from(u16_at(after + 4)?);
        let other = rest
            .get(after + 6..after + 6 + other_len)
            .ok_or_else(short)?;
        Ok(TsigFields {
            algorithm: wire_name_text(algorithm),
            time: u64::from_be_bytes(time),
            fudge,
            mac,
            original_id,
            error,
            other,
        })
    }
}

/// An uncompressed wire name as lower-case text with a final dot.
fn wire_name_text(wire: &[u8]) -> String {
    let mut text = String::new();
    let mut pos = 0;
    while let Some(&len) = wire.get(pos) {
        if len == 0 {
            break;
        }
        let label = wire.get(pos + 1..pos + 1 + usize::from(len)).unwrap_or(&[]);
        text.push_str(&String::from_utf8_lossy(label).to_ascii_lowercase());
        text.push('.');
        pos += 1 + usize::from(len);
    }
    text
}

fn bump_additional_count(bytes: &mut [u8], by: i32) -> Result<(), WireError> {
    let count = bytes
        .get(10..12)
        .ok_or_else(|| WireError("message shorter than its header".into()))?;
    let count = i32::from(u16::from_be_bytes([count[0], count[1]])) + by;
    let count =
        u16::try_from(count).map_err(|_| WireError("additional count out of range".into()))?;
    bytes[10..12].copy_from_slice(&count.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::dns::wire::{TYPE_A, TYPE_SOA};

    fn key(secret: &[u8]) -> Result<TsigKey, Box<dyn std::error::Error>> {
        Ok(TsigKey::new(Name::parse("navette")?, secret))
    }

    /// Signs an answer the way a server does (RFC 8945 section 5.3).
    fn server_signs(key: &TsigKey, answer: &Message, request_mac: &[u8], time: u64) -> Vec<u8> {
        let mut bytes = answer.to_bytes().unwrap_or_default();
        let mut context = ring::hmac::Context::with_key(&key.key);
        context.update(&(request_mac.len() as u16).to_be_bytes());
        context.update(request_mac);
        context.update(&bytes);
        context.update(&key.variables(time, 0, &[]));
        let mac = context.sign().as_ref().to_vec();
        let _ = key.record(time, &mac, answer.id).write(&mut bytes);
        let _ = bump_additional_count(&mut bytes, 1);
        bytes
    }

    #[test]
    fn a_signed_request_carries_a_tsig_record_over_the_message()
    -> Result<(), Box<dyn std::error::Error>> {
        let key = key(b"0123456789abcdef0123456789abcdef")?;
        let query = Message::query(7, &Name::parse("www.alice.example")?, TYPE_A);
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let (bytes, mac) = key.sign(&query, now)?;
        let parsed = Message::parse(&bytes)?;
        assert_eq!(parsed.additional.len(), 1);
        let fields = TsigFields::parse(&parsed.additional[0].rdata)?;
        assert_eq!(fields.algorithm, ALGORITHM);
        assert_eq!(fields.time, 1_800_000_000);
        assert_eq!(fields.mac, mac.as_slice());
        assert_eq!(fields.original_id, 7);
        // The MAC is HMAC-SHA256 over the unsigned message and the variables.
        let mut expected = ring::hmac::Context::with_key(&key.key);
        expected.update(&query.to_bytes()?);
        expected.update(&key.variables(1_800_000_000, 0, &[]));
        assert_eq!(expected.sign().as_ref(), mac.as_slice());
        Ok(())
    }

    #[test]
    fn answers_verify_only_with_the_key_the_request_mac_and_the_time()
    -> Result<(), Box<dyn std::error::Error>> {
        let key = key(b"0123456789abcdef0123456789abcdef")?;
        let other = TsigKey::new(Name::parse("navette")?, b"another secret entirely");
        let zone = Name::parse("alice.example")?;
        let update = Message::update(9, &zone, Vec::new(), Vec::new());
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let (_, request_mac) = key.sign(&update, now)?;
        let answer = Message {
            response: true,
            ..update.clone()
        };
        let bytes = server_signs(&key, &answer, &request_mac, 1_800_000_000);
        let parsed = Message::parse(&bytes)?;
        key.verify(&bytes, &parsed, &request_mac, now)?;
        assert_eq!(
            other.verify(&bytes, &parsed, &request_mac, now),
            Err(TsigError::Invalid("does not match the key"))
        );
        assert!(
            key.verify(&bytes, &parsed, b"another request", now)
                .is_err()
        );
        let late = now + Duration::from_secs(301);
        assert!(key.verify(&bytes, &parsed, &request_mac, late).is_err());
        // A flipped bit in the answer.
        let mut tampered = bytes.clone();
        tampered[3] ^= 0x01;
        let parsed_tampered = Message::parse(&tampered)?;
        assert!(
            key.verify(&tampered, &parsed_tampered, &request_mac, now)
                .is_err()
        );
        // No TSIG at all.
        let unsigned = Message::query(9, &zone, TYPE_SOA).to_bytes()?;
        assert_eq!(
            key.verify(&unsigned, &Message::parse(&unsigned)?, &request_mac, now),
            Err(TsigError::Unsigned)
        );
        Ok(())
    }
}
