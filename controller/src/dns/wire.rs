//! DNS messages on the wire (RFC 1035 section 4, RFC 2136 section 2):
//! names, resource records, and the few message shapes Navette sends, a
//! query and an UPDATE, plus a parser for the answers.
//!
//! Owns the byte layout only: what to ask and what an answer means is
//! [`super::client`]'s and [`super::records`]'s. Names are written
//! uncompressed (allowed everywhere, and what TSIG's canonical form wants);
//! answers are parsed with compression, with every offset bounds-checked and
//! pointer loops cut, since an answer is input from the network.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

pub const TYPE_A: u16 = 1;
pub const TYPE_SOA: u16 = 6;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_TSIG: u16 = 250;

pub const CLASS_IN: u16 = 1;
/// RFC 2136: "RRset does not exist" prerequisites, "delete an RR" updates.
pub const CLASS_NONE: u16 = 254;
/// RFC 2136: "RRset exists" prerequisites, "delete an RRset" updates; TSIG.
pub const CLASS_ANY: u16 = 255;

pub const OPCODE_QUERY: u8 = 0;
pub const OPCODE_UPDATE: u8 = 5;

/// Response codes (RFC 1035, RFC 2136, RFC 8945).
pub mod rcode {
    pub const NOERROR: u16 = 0;
    pub const FORMERR: u16 = 1;
    pub const SERVFAIL: u16 = 2;
    pub const NXDOMAIN: u16 = 3;
    pub const NOTIMP: u16 = 4;
    pub const REFUSED: u16 = 5;
    pub const YXDOMAIN: u16 = 6;
    pub const YXRRSET: u16 = 7;
    pub const NXRRSET: u16 = 8;
    pub const NOTAUTH: u16 = 9;
    pub const NOTZONE: u16 = 10;
    pub const BADSIG: u16 = 16;
    pub const BADKEY: u16 = 17;
    pub const BADTIME: u16 = 18;

    /// The code's mnemonic, for messages.
    pub fn name(code: u16) -> &'static str {
        match code {
            NOERROR => "NOERROR",
            FORMERR => "FORMERR",
            SERVFAIL => "SERVFAIL",
            NXDOMAIN => "NXDOMAIN",
            NOTIMP => "NOTIMP",
            REFUSED => "REFUSED",
            YXDOMAIN => "YXDOMAIN",
            YXRRSET => "YXRRSET",
            NXRRSET => "NXRRSET",
            NOTAUTH => "NOTAUTH",
            NOTZONE => "NOTZONE",
            BADSIG => "BADSIG",
            BADKEY => "BADKEY",
            BADTIME => "BADTIME",
            _ => "unknown code",
        }
    }
}

/// Why a name was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "{name:?} is not a DNS host name Navette writes: {reason} (labels of a-z, 0-9 and '-', 1 to 63 bytes each, 253 in all)"
)]
pub struct NameError {
    pub name: String,
    pub reason: &'static str,
}

/// A checked, absolute, lower-case domain name, kept with its final dot
/// (`www.alice.example.`). Site domains come from customers through their
/// host's agent: only letters, digits and '-' reach a DNS message.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Name(String);

impl Name {
    pub fn parse(text: &str) -> Result<Name, NameError> {
        let refuse = |reason| NameError {
            name: text.to_owned(),
            reason,
        };
        let lower = text.trim_end_matches('.').to_ascii_lowercase();
        if lower.is_empty() {
            return Err(refuse("empty (the root is no host name)"));
        }
        if lower.len() > 253 {
            return Err(refuse("longer than 253 bytes"));
        }
        for label in lower.split('.') {
            if label.is_empty() || label.len() > 63 {
                return Err(refuse("a label is empty or longer than 63 bytes"));
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return Err(refuse("a label holds a character other than a-z, 0-9, '-'"));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(refuse("a label starts or ends with '-'"));
            }
        }
        Ok(Name(format!("{lower}.")))
    }

    /// The name with its final dot.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn labels(&self) -> impl Iterator<Item = &str> {
        self.0.trim_end_matches('.').split('.')
    }

    /// Whether this name is `zone` or below it.
    pub fn is_within(&self, zone: &Name) -> bool {
        self == zone || self.0.ends_with(&format!(".{}", zone.0))
    }

    /// Appends the uncompressed wire form (also TSIG's canonical form:
    /// names are stored lower-case).
    pub fn write(&self, out: &mut Vec<u8>) {
        for label in self.labels() {
            // Checked at parse: 1 to 63 bytes.
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
        out.push(0);
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Name {
    type Error = NameError;
    fn try_from(text: String) -> Result<Name, NameError> {
        Name::parse(&text)
    }
}

impl From<Name> for String {
    fn from(name: Name) -> String {
        name.0
    }
}

/// A resource record as sent or received. `owner` is kept as received
/// text for records whose name Navette did not write (an answer may hold
/// any bytes); compare it with [`Name::as_str`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub owner: String,
    pub rtype: u16,
    pub class: u16,
    pub ttl: u32,
    pub rdata: Vec<u8>,
}

impl Record {
    /// An address record of class IN.
    pub fn address(owner: &Name, address: IpAddr, ttl: u32) -> Record {
        let (rtype, rdata) = match address {
            IpAddr::V4(v4) => (TYPE_A, v4.octets().to_vec()),
            IpAddr::V6(v6) => (TYPE_AAAA, v6.octets().to_vec()),
        };
        Record {
            owner: owner.as_str().to_owned(),
            rtype,
            class: CLASS_IN,
            ttl,
            rdata,
        }
    }

    /// The address of an A or AAAA record.
    pub fn ip(&self) -> Option<IpAddr> {
        match (self.rtype, self.rdata.len()) {
            (TYPE_A, 4) => {
                let b: [u8; 4] = self.rdata.as_slice().try_into().ok()?;
                Some(IpAddr::V4(Ipv4Addr::from(b)))
            }
            (TYPE_AAAA, 16) => {
                let b: [u8; 16] = self.rdata.as_slice().try_into().ok()?;
                Some(IpAddr::V6(Ipv6Addr::from(b)))
            }
            _ => None,
        }
    }

    /// Appends the record's wire form (owner uncompressed).
    pub fn write(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        let owner = Name::parse(&self.owner).map_err(|e| WireError(e.to_string()))?;
        owner.write(out);
        out.extend_from_slice(&self.rtype.to_be_bytes());
        out.extend_from_slice(&self.class.to_be_bytes());
        out.extend_from_slice(&self.ttl.to_be_bytes());
        let len =
            u16::try_from(self.rdata.len()).map_err(|_| WireError("rdata too long".into()))?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&self.rdata);
        Ok(())
    }
}

/// A message that could not be built or parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed DNS message: {0}")]
pub struct WireError(pub String);

/// A question (or, in an UPDATE, the zone).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Question {
    pub name: String,
    pub qtype: u16,
    pub class: u16,
}

/// A DNS message. In an UPDATE the sections are named zone, prerequisite,
/// update and additional (RFC 2136 section 2); they sit where question,
/// answer, authority and additional sit in a query.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    pub id: u16,
    pub response: bool,
    pub opcode: u8,
    pub authoritative: bool,
    pub truncated: bool,
    /// The header's 4-bit code (a TSIG error is in the TSIG record).
    pub rcode: u16,
    pub questions: Vec<Question>,
    pub answers: Vec<Record>,
    pub authority: Vec<Record>,
    pub additional: Vec<Record>,
    /// Where the last additional record starts, when it is a TSIG record:
    /// what the response's MAC covers ends there.
    pub tsig_offset: Option<usize>,
}

impl Message {
    /// A query for `name`/`qtype`, recursion not desired.
    pub fn query(id: u16, name: &Name, qtype: u16) -> Message {
        Message {
            id,
            opcode: OPCODE_QUERY,
            questions: vec![Question {
                name: name.as_str().to_owned(),
                qtype,
                class: CLASS_IN,
            }],
            ..Message::default()
        }
    }

    /// An UPDATE of `zone` with its prerequisites and updates.
    pub fn update(
        id: u16,
        zone: &Name,
        prerequisites: Vec<Record>,
        updates: Vec<Record>,
    ) -> Message {
        Message {
            id,
            opcode: OPCODE_UPDATE,
            questions: vec![Question {
                name: zone.as_str().to_owned(),
                qtype: TYPE_SOA,
                class: CLASS_IN,
            }],
            answers: prerequisites,
            authority: updates,
            ..Message::default()
        }
    }

    /// The wire form, additional section included.
    pub fn to_bytes(&self) -> Result<Vec<u8>, WireError> {
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(&self.id.to_be_bytes());
        let flags: u16 = (u16::from(self.response) << 15)
            | (u16::from(self.opcode & 0x0f) << 11)
            | (u16::from(self.authoritative) << 10)
            | (u16::from(self.truncated) << 9)
            | (self.rcode & 0x0f);
        out.extend_from_slice(&flags.to_be_bytes());
        for count in [
            self.questions.len(),
            self.answers.len(),
            self.authority.len(),
            self.additional.len(),
        ] {
            let count = u16::try_from(count).map_err(|_| WireError("too many records".into()))?;
            out.extend_from_slice(&count.to_be_bytes());
        }
        for question in &self.questions {
            Name::parse(&question.name)
                .map_err(|e| WireError(e.to_string()))?
                .write(&mut out);
            out.extend_from_slice(&question.qtype.to_be_bytes());
            out.extend_from_slice(&question.class.to_be_bytes());
        }
        for record in self
            .answers
            .iter()
            .chain(&self.authority)
            .chain(&self.additional)
        {
            record.write(&mut out)?;
        }
        Ok(out)
    }

    /// Parses a message received from the network.
    pub fn parse(bytes: &[u8]) -> Result<Message, WireError> {
        let mut reader = Reader { bytes, pos: 0 };
        let id = reader.u16()?;
        let flags = reader.u16()?;
        let counts = [reader.u16()?, reader.u16()?, reader.u16()?, reader.u16()?];
        let mut message = Message {
            id,
            response: flags & 0x8000 != 0,
            opcode: ((flags >> 11) & 0x0f) as u8,
            authoritative: flags & 0x0400 != 0,
            truncated: flags & 0x0200 != 0,
            rcode: flags & 0x000f,
            ..Message::default()
        };
        for _ in 0..counts[0] {
            let name = reader.name()?;
            message.questions.push(Question {
                name,
                qtype: reader.u16()?,
                class: reader.u16()?,
            });
        }
        for (section, count) in counts[1..].iter().enumerate() {
            for _ in 0..*count {
                let start = reader.pos;
                let record = reader.record()?;
                match section {
                    0 => message.answers.push(record),
                    1 => message.authority.push(record),
                    _ => {
                        message.tsig_offset = (record.rtype == TYPE_TSIG).then_some(start);
                        message.additional.push(record);
                    }
                }
            }
        }
        Ok(message)
    }
}

/// A cursor over received bytes; every read is bounds-checked.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], WireError> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| WireError(format!("truncated at byte {}", self.pos)))?;
        let bytes = self.bytes;
        let slice = &bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A possibly compressed name, as lower-case text with a final dot.
    /// Labels are kept as received (escaped when not printable).
    fn name(&mut self) -> Result<String, WireError> {
        let mut text = String::new();
        let mut pos = self.pos;
        let mut jumped = false;
        // Each pointer must go backwards, so the walk ends; this bounds it
        // as well.
        let mut hops = 0;
        loop {
            let len = *self
                .bytes
                .get(pos)
                .ok_or_else(|| WireError(format!("name runs past the end at byte {pos}")))?;
            match len {
                0 => {
                    if !jumped {
                        self.pos = pos + 1;
                    }
                    break;
                }
                l if l & 0xc0 == 0xc0 => {
                    let low = *self
                        .bytes
                        .get(pos + 1)
                        .ok_or_else(|| WireError("truncated name pointer".into()))?;
                    let target = (usize::from(l & 0x3f) << 8) | usize::from(low);
                    hops += 1;
                    if target >= pos || hops > 64 {
                        return Err(WireError(format!("name pointer loop at byte {pos}")));
                    }
                    if !jumped {
                        self.pos = pos + 2;
                    }
                    jumped = true;
                    pos = target;
                }
                l if l & 0xc0 == 0 => {
                    let start = pos + 1;
                    let end = start + usize::from(l);
                    let label = self
                        .bytes
                        .get(start..end)
                        .ok_or_else(|| WireError("truncated label".into()))?;
                    for &b in label {
                        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                            text.push(char::from(b.to_ascii_lowercase()));
                        } else {
                            text.push_str(&format!("\\{b:03}"));
                        }
                    }
                    text.push('.');
                    if text.len() > 1024 {
                        return Err(WireError("name too long".into()));
                    }
                    pos = end;
                }
                _ => return Err(WireError(format!("unknown label type at byte {pos}"))),
            }
        }
        if text.is_empty() {
            text.push('.');
        }
        Ok(text)
    }

    fn record(&mut self) -> Result<Record, WireError> {
        let owner = self.name()?;
        let rtype = self.u16()?;
        let class = self.u16()?;
        let ttl = self.u32()?;
        let len = self.u16()?;
        let rdata_start = self.pos;
        let rdata = self.take(usize::from(len))?.to_vec();
        let rdata = if rtype == TYPE_TSIG {
            // The algorithm name may in theory be compressed: expand it so
            // the rdata stands alone.
            let mut inner = Reader {
                bytes: self.bytes,
                pos: rdata_start,
            };
            let algorithm = inner.name()?;
            let rest = self
                .bytes
                .get(inner.pos..rdata_start + usize::from(len))
                .ok_or_else(|| WireError("TSIG record shorter than its name".into()))?;
            let mut expanded = Vec::with_capacity(rdata.len());
            write_text_name(&algorithm, &mut expanded)?;
            expanded.extend_from_slice(rest);
            expanded
        } else {
            rdata
        };
        Ok(Record {
            owner,
            rtype,
            class,
            ttl,
            rdata,
        })
    }
}

/// Writes a name received as text (with a final dot) back in wire form.
fn write_text_name(text: &str, out: &mut Vec<u8>) -> Result<(), WireError> {
    if text == "." {
        out.push(0);
        return Ok(());
    }
    let name = Name::parse(text).map_err(|e| WireError(e.to_string()))?;
    name.write(out);
    Ok(())
}

/// Splits a TSIG rdata into its algorithm name (wire form) and the rest.
pub fn split_name(rdata: &[u8]) -> Result<(&[u8], &[u8]), WireError> {
    let mut pos = 0;
    loop {
        let len = usize::from(
            *rdata
                .get(pos)
                .ok_or_else(|| WireError("TSIG algorithm name runs past its record".into()))?,
        );
        if len & 0xc0 != 0 {
            return Err(WireError("compressed TSIG algorithm name".into()));
        }
        pos += 1 + len;
        if len == 0 {
            break;
        }
    }
    rdata
        .split_at_checked(pos)
        .ok_or_else(|| WireError("TSIG algorithm name runs past its record".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> Name {
        Name::parse(text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn names_are_checked_lower_cased_and_absolute() {
        assert_eq!(name("WWW.Alice.Example").as_str(), "www.alice.example.");
        assert_eq!(name("alice.example.").as_str(), "alice.example.");
        for bad in [
            "",
            ".",
            "a..b",
            "-a.example",
            "a-.example",
            "a b.example",
            "a;.example",
        ] {
            assert!(Name::parse(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("{}.example", "a".repeat(64));
        assert!(Name::parse(&long).is_err());
        assert!(name("www.alice.example").is_within(&name("alice.example")));
        assert!(name("alice.example").is_within(&name("alice.example")));
        assert!(!name("malice.example").is_within(&name("alice.example")));
    }

    #[test]
    fn an_update_is_laid_out_as_rfc_2136_says() -> Result<(), WireError> {
        let zone = name("alice.example");
        let www = name("www.alice.example");
        let prerequisite = Record {
            class: CLASS_IN,
            ttl: 0,
            ..Record::address(&www, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)), 0)
        };
        let delete = Record {
            owner: www.as_str().into(),
            rtype: TYPE_A,
            class: CLASS_ANY,
            ttl: 0,
            rdata: Vec::new(),
        };
        let add = Record::address(&www, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 11)), 60);
        let bytes =
            Message::update(0x1234, &zone, vec![prerequisite], vec![delete, add]).to_bytes()?;
        // Header: id, opcode 5 (0x2800), counts 1/1/2/0.
        assert_eq!(&bytes[..12], &[0x12, 0x34, 0x28, 0, 0, 1, 0, 1, 0, 2, 0, 0]);
        // Zone section: alice.example. SOA IN.
        assert_eq!(&bytes[12..27], b"\x05alice\x07example\x00");
        assert_eq!(&bytes[27..31], &[0, 6, 0, 1]);
        // The prerequisite: www.alice.example. A IN ttl 0, rdata 192.0.2.10.
        let mut expected = b"\x03www\x05alice\x07example\x00".to_vec();
        expected.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 0, 0, 4, 192, 0, 2, 10]);
        assert_eq!(&bytes[31..31 + expected.len()], expected.as_slice());
        let parsed = Message::parse(&bytes)?;
        assert_eq!(parsed.opcode, OPCODE_UPDATE);
        assert_eq!(parsed.authority.len(), 2);
        assert_eq!(
            parsed.authority[1].ip(),
            Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 11)))
        );
        assert_eq!(parsed.authority[1].ttl, 60);
        Ok(())
    }

    #[test]
    fn compressed_answers_parse_and_pointer_loops_do_not() -> Result<(), WireError> {
        // A response to "www.alice.example. A" whose answer's owner points
        // back at the question's name (offset 12).
        let mut bytes = vec![0xab, 0xcd, 0x84, 0x00, 0, 1, 0, 1, 0, 0, 0, 0];
        bytes.extend_from_slice(b"\x03www\x05alice\x07example\x00\x00\x01\x00\x01");
        bytes.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 1, 44, 0, 4, 192, 0, 2, 10]);
        let parsed = Message::parse(&bytes)?;
        assert!(parsed.response && parsed.authoritative);
        assert_eq!(parsed.answers[0].owner, "www.alice.example.");
        assert_eq!(parsed.answers[0].ttl, 300);
        assert_eq!(
            parsed.answers[0].ip(),
            Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)))
        );
        // A pointer to itself.
        let mut looping = vec![0, 0, 0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        looping.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert!(Message::parse(&looping).is_err());
        // Truncated anywhere: an error, never a panic.
        for cut in 0..bytes.len() {
            let _ = Message::parse(&bytes[..cut]);
        }
        Ok(())
    }
}
