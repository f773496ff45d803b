//! Checking the DEFINERs of the dump stream on the target, before the
//! loader session (which may set definers: `SET USER`) receives them.
//!
//! [`DefinerCheck`] sits between the source's chunks and the loader's
//! client. Every `DEFINER` clause in the bytes must name one of the users
//! this copy creates for the account; the bytes are passed on only once
//! every clause in them was read to its end and accepted, so a refused
//! clause never reaches the server (the loader is then killed, never given
//! end-of-input, which would run an unfinished statement).
//!
//! *Invariant*: the check does not depend on where statements, strings or
//! comments start. It looks at every occurrence of the word `definer`
//! (ASCII, any case, not inside a longer ASCII name) in the raw bytes,
//! wherever it is, so no trick of quoting, `sql_mode`
//! (`NO_BACKSLASH_ESCAPES`, `ANSI_QUOTES`), character set or delimiter can
//! hide a clause from it: the server can only see a clause where these
//! bytes are. After the word, it skips whatever the server may skip
//! (blanks, comments; a versioned `/*!...*/` comment both as code and as
//! a comment); if an `=` can follow, the account after it must be written
//! plainly (quoted or bare names, no comment, no backslash) and be one of
//! the allowed users. The price is an occasional refusal of text that is
//! not a clause (a row holding the words `definer = 'x'@'y'`), which the
//! finding names.

/// The longest a clause may take, from the word to the end of the account,
/// including what is skipped. Real dumps write a few dozen bytes.
const MAX_CLAUSE: usize = 64 * 1024;

const WORD: &[u8] = b"definer";

/// What follows a `definer` word.
enum Follows {
    /// More bytes are needed to decide.
    Incomplete,
    /// Not a DEFINER clause (`SQL SECURITY DEFINER`, a column name).
    Nothing,
    /// `=` can follow: positions just after each `=` that can.
    Clause(Vec<usize>),
}

/// The check of one dump stream.
pub struct DefinerCheck {
    /// `(user, host)` a DEFINER may name.
    allowed: Vec<(String, String)>,
    /// Bytes received and not passed on yet.
    pending: Vec<u8>,
    /// The last byte passed on (a word boundary across chunks).
    last_passed: Option<u8>,
    /// Stream offset of `pending[0]`, for findings.
    offset: u64,
}

impl DefinerCheck {
    pub fn new(allowed: Vec<(String, String)>) -> DefinerCheck {
        DefinerCheck {
            allowed,
            pending: Vec::new(),
            last_passed: None,
            offset: 0,
        }
    }

    /// Takes `chunk`; the bytes that may go to the server now, or the
    /// finding that refuses the stream.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<u8>, String> {
        self.pending.extend_from_slice(chunk);
        self.release(false)
    }

    /// The end of the stream: the bytes left, or the finding.
    pub fn finish(&mut self) -> Result<Vec<u8>, String> {
        self.release(true)
    }

    fn release(&mut self, eof: bool) -> Result<Vec<u8>, String> {
        let bytes = &self.pending;
        let mut safe = if eof {
            bytes.len()
        } else {
            // A word cut at the end of the chunk.
            bytes.len().saturating_sub(WORD.len())
        };
        let mut at = 0;
        while let Some(found) = find_word(bytes, at, self.last_passed) {
            if found >= safe && !eof {
                break;
            }
            let after = found + WORD.len();
            if after == bytes.len() && !eof {
                safe = found;
                break;
            }
            if bytes.get(after).copied().is_some_and(is_name_byte) {
                at = after;
                continue;
            }
            match follows(bytes, after, eof) {
                Follows::Incomplete => {
                    if bytes.len() - found > MAX_CLAUSE {
                        return Err(self.finding(found, "a DEFINER clause longer than 64 KiB"));
                    }
                    safe = found;
                    break;
                }
                Follows::Nothing => {}
                Follows::Clause(starts) => {
                    for start in starts {
                        match account_at(bytes, start, eof) {
                            Account::Incomplete => {
                                if bytes.len() - found > MAX_CLAUSE {
                                    return Err(
                                        self.finding(found, "a DEFINER clause longer than 64 KiB")
                                    );
                                }
                                safe = safe.min(found);
                            }
                            Account::Unreadable => {
                                return Err(self.finding(
                                    found,
                                    "a DEFINER that does not name a user plainly",
                                ));
                            }
                            Account::Named(user, host) => {
                                if !self.allows(&user, &host) {
                                    return Err(self.finding(
                                        found,
                                        &format!(
                                            "DEFINER {user}@{host}, which is not one of the account's users copied here"
                                        ),
                                    ));
                                }
                            }
                        }
                    }
                    if safe <= found {
                        break;
                    }
                }
            }
            at = after;
        }
        let passed: Vec<u8> = self.pending.drain(..safe).collect();
        if let Some(&last) = passed.last() {
            self.last_passed = Some(last);
        }
        self.offset += passed.len() as u64;
        Ok(passed)
    }

    fn allows(&self, user: &str, host: &str) -> bool {
        self.allowed
            .iter()
            .any(|(u, h)| u == user && h.eq_ignore_ascii_case(host))
    }

    fn finding(&self, at: usize, what: &str) -> String {
        let from = at.saturating_sub(40);
        let to = (at + 80).min(self.pending.len());
        let context = String::from_utf8_lossy(&self.pending[from..to])
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect::<String>();
        format!(
            "{what} (at byte {} of the dump: {:?})",
            self.offset + at as u64,
            context.trim()
        )
    }
}

/// Bytes that continue an ASCII name (the server's identifiers): a word
/// next to one of these is part of a longer name.
fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$'
}

/// The next `definer` from `at` not preceded by a name byte.
fn find_word(bytes: &[u8], mut at: usize, before_start: Option<u8>) -> Option<usize> {
    while at + WORD.len() <= bytes.len() {
        if bytes[at] | 0x20 == b'd' && bytes[at..at + WORD.len()].eq_ignore_ascii_case(WORD) {
            let before = if at == 0 {
                before_start
            } else {
                Some(bytes[at - 1])
            };
            if !before.is_some_and(is_name_byte) {
                return Some(at);
            }
        }
        at += 1;
    }
    None
}

/// Bytes the server may take as blank: ASCII blanks and controls, and, as
/// some character sets have blanks above ASCII, every byte above it.
fn is_blank(b: u8) -> bool {
    b.is_ascii_whitespace() || b.is_ascii_control() || b >= 0x80
}

fn find(bytes: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    bytes
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| from + p)
}

/// Whether an `=` can follow the word ending at `at`, skipping what the
/// server may skip.
fn follows(bytes: &[u8], mut at: usize, eof: bool) -> Follows {
    let end = if eof {
        Follows::Nothing
    } else {
        Follows::Incomplete
    };
    loop {
        let Some(&b) = bytes.get(at) else {
            return end;
        };
        let next = bytes.get(at + 1).copied();
        if next.is_none() && !eof && matches!(b, b'/' | b'*' | b'-' | b':') {
            // The start of a comment, of its end, or of `:=`.
            return Follows::Incomplete;
        }
        if is_blank(b) {
            at += 1;
        } else if b == b'=' {
            return Follows::Clause(vec![at + 1]);
        } else if b == b':' {
            // `:=` is not the grammar's, but costs nothing to check.
            return match next {
                Some(b'=') => Follows::Clause(vec![at + 2]),
                None if !eof => Follows::Incomplete,
                _ => Follows::Nothing,
            };
        } else if b == b'*' && next == Some(b'/') {
            at += 2;
        } else if b == b'/' && next == Some(b'*') {
            // A versioned comment runs as code on some servers and is a
            // comment on others: try both.
            let marker = if bytes.get(at + 2) == Some(&b'!') {
                Some(at + 3)
            } else if bytes.get(at + 2..at + 4) == Some(b"M!".as_slice()) {
                Some(at + 4)
            } else if bytes.len() < at + 4 && !eof {
                return Follows::Incomplete;
            } else {
                None
            };
            let as_comment = match find(bytes, at + 2, b"*/") {
                Some(close) => follows(bytes, close + 2, eof),
                None => end_of(eof),
            };
            let Some(mut code) = marker else {
                return as_comment;
            };
            while bytes.get(code).is_some_and(u8::is_ascii_digit) {
                code += 1;
            }
            return merge(follows(bytes, code, eof), as_comment);
        } else if b == b'#' || (b == b'-' && next == Some(b'-')) {
            match find(bytes, at, b"\n") {
                Some(line_end) => at = line_end + 1,
                None => return end_of(eof),
            }
        } else {
            return Follows::Nothing;
        }
    }
}

fn end_of(eof: bool) -> Follows {
    if eof {
        Follows::Nothing
    } else {
        Follows::Incomplete
    }
}

fn merge(a: Follows, b: Follows) -> Follows {
    match (a, b) {
        (Follows::Incomplete, _) | (_, Follows::Incomplete) => Follows::Incomplete,
        (Follows::Clause(mut x), Follows::Clause(y)) => {
            x.extend(y);
            Follows::Clause(x)
        }
        (Follows::Clause(x), Follows::Nothing) | (Follows::Nothing, Follows::Clause(x)) => {
            Follows::Clause(x)
        }
        (Follows::Nothing, Follows::Nothing) => Follows::Nothing,
    }
}

/// The account after a clause's `=`.
enum Account {
    Incomplete,
    Unreadable,
    Named(String, String),
}

/// Reads `user@host` at `at`: each a quoted name (no backslash) or a bare
/// one, only blanks around the `@`.
fn account_at(bytes: &[u8], at: usize, eof: bool) -> Account {
    let mut at = skip_blanks(bytes, at);
    let user = match name_at(bytes, at, eof) {
        Ok((user, after)) => {
            at = after;
            user
        }
        Err(account) => return account,
    };
    at = skip_blanks(bytes, at);
    match bytes.get(at) {
        None if !eof => return Account::Incomplete,
        Some(b'@') => at += 1,
        // CURRENT_USER, CURRENT_ROLE, a role: never one of the account's
        // users.
        _ => return Account::Named(user, String::new()),
    }
    at = skip_blanks(bytes, at);
    let host = match name_at(bytes, at, eof) {
        Ok((host, after)) => {
            at = after;
            host
        }
        Err(account) => return account,
    };
    match bytes.get(at) {
        None if !eof => Account::Incomplete,
        Some(&b) if is_name_byte(b) || b"'`\"@.%-\\".contains(&b) => Account::Unreadable,
        _ => Account::Named(user, host),
    }
}

/// Only plain blanks: a comment inside an account is refused as
/// unreadable by the caller (the next byte is then not a name).
fn skip_blanks(bytes: &[u8], mut at: usize) -> usize {
    while bytes.get(at).is_some_and(|b| b.is_ascii_whitespace()) {
        at += 1;
    }
    at
}

fn name_at(bytes: &[u8], at: usize, eof: bool) -> Result<(String, usize), Account> {
    let incomplete = || {
        if eof {
            Account::Unreadable
        } else {
            Account::Incomplete
        }
    };
    let Some(&first) = bytes.get(at) else {
        return Err(incomplete());
    };
    if matches!(first, b'\'' | b'`' | b'"') {
        let mut name = Vec::new();
        let mut i = at + 1;
        loop {
            let Some(&b) = bytes.get(i) else {
                return Err(incomplete());
            };
            if b == b'\\' {
                return Err(Account::Unreadable);
            }
            if b == first {
                match bytes.get(i + 1) {
                    Some(&again) if again == first => {
                        name.push(first);
                        i += 2;
                        continue;
                    }
                    None if !eof => return Err(Account::Incomplete),
                    _ => break,
                }
            }
            name.push(b);
            i += 1;
        }
        let name = String::from_utf8(name).map_err(|_| Account::Unreadable)?;
        return Ok((name, i + 1));
    }
    let mut i = at;
    while bytes
        .get(i)
        .is_some_and(|&b| is_name_byte(b) || b == b'.' || b == b'-' || b == b'%')
    {
        i += 1;
    }
    if i == bytes.len() && !eof {
        return Err(Account::Incomplete);
    }
    if i == at {
        return Err(Account::Unreadable);
    }
    Ok((String::from_utf8_lossy(&bytes[at..i]).into_owned(), i))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check() -> DefinerCheck {
        DefinerCheck::new(vec![
            ("alice".to_owned(), "%".to_owned()),
            ("alice_ro".to_owned(), "localhost".to_owned()),
        ])
    }

    /// Feeds `text` in pieces of `size` bytes; everything passed, or the
    /// finding.
    fn run(text: &str, size: usize) -> Result<String, String> {
        let mut check = check();
        let mut passed = Vec::new();
        for piece in text.as_bytes().chunks(size) {
            passed.extend(check.feed(piece)?);
        }
        passed.extend(check.finish()?);
        assert_eq!(passed, text.as_bytes(), "bytes lost or changed");
        Ok(String::from_utf8_lossy(&passed).into_owned())
    }

    #[test]
    fn the_accounts_definers_pass_in_any_chunking() {
        let dump = "/*!50001 CREATE ALGORITHM=UNDEFINED */\n\
             /*!50013 DEFINER=`alice`@`%` SQL SECURITY DEFINER */\n\
             /*!50001 VIEW `v` AS select 1 AS `1` */;\n\
             CREATE DEFINER='alice_ro'@'LOCALHOST' PROCEDURE p() SELECT 'the definer is not here';\n\
             /*!50003 CREATE*/ /*!50017 DEFINER = alice@`%`*/ /*!50003 TRIGGER t */;\n\
             INSERT INTO t VALUES ('undefined', 'definers');\n";
        for size in [1, 2, 7, 13, 64, 4096] {
            assert!(
                run(dump, size).is_ok(),
                "chunks of {size}: {:?}",
                run(dump, size)
            );
        }
    }

    #[test]
    fn any_other_definer_is_refused_wherever_it_hides() {
        for dump in [
            "CREATE DEFINER=`root`@`localhost` PROCEDURE p() SELECT 1;",
            "create definer = 'root'@'localhost' view v as select 1;",
            // Inside what a lexer with the wrong sql_mode takes as a string.
            "SET STATEMENT x='a\\' FOR CREATE DEFINER=root@localhost PROCEDURE p() SELECT 1 -- ';",
            "CREATE DEFINER /*!99999 x */ = root@localhost PROCEDURE p() SELECT 1;",
            "CREATE DEFINER /* c */ -- c\n = `root`@`localhost` EVENT e DO SELECT 1;",
            "CREATE DEFINER=`alice`@`%`x PROCEDURE p() SELECT 1;",
            "CREATE DEFINER=`alice` /**/ @`%` PROCEDURE p() SELECT 1;",
            "CREATE DEFINER='ali\\ce'@'%' PROCEDURE p() SELECT 1;",
            "CREATE DEFINER=CURRENT_USER PROCEDURE p() SELECT 1;",
            "CREATE DEFINER=`alice`@`localhost` PROCEDURE p() SELECT 1;",
            "CREATE DEFINER\u{a0}=`root`@`localhost` PROCEDURE p() SELECT 1;",
            "CREATE DEFINER=",
        ] {
            for size in [1, 5, 4096] {
                let refused = run(dump, size);
                assert!(refused.is_err(), "passed in chunks of {size}: {dump}");
            }
        }
        let finding = run(
            "CREATE DEFINER=`root`@`localhost` VIEW v AS SELECT 1;",
            4096,
        )
        .err()
        .unwrap_or_default();
        assert!(
            finding.starts_with("DEFINER root@localhost, which is not"),
            "{finding}"
        );
    }

    #[test]
    fn a_refused_clause_is_never_passed_on() -> Result<(), String> {
        let mut check = check();
        let passed = check.feed(b"SELECT 1;\nCREATE DEFINER=`ro")?;
        assert_eq!(passed, b"SELECT 1;\nCREATE ");
        assert!(
            check
                .feed(b"ot`@`localhost` PROCEDURE p() SELECT 1;")
                .is_err()
        );
        Ok(())
    }
}
