//! The account's users as the target accepts them: which names belong to
//! the account, and a user's definition (authentication, TLS requirements,
//! limits, expiry, lock) parsed from the `SHOW CREATE USER` text the source
//! sent into fields, from which the target builds its own `CREATE USER` and
//! `ALTER USER`.
//!
//! *Invariant*: no text of the source's is ever executed as it came. Names
//! and strings are re-quoted by [`ident`]/[`literal`], keywords come from
//! this module, numbers are parsed; anything the parser does not know (a
//! second user in the same statement, an authentication plugin outside
//! [`PLUGINS`], a stray `;`) is refused with a finding naming it.

use super::client::literal;

/// Authentication plugins a copied user may use: passwords (hashes) and
/// the socket's peer user. Plugins that authenticate against something of
/// the target host itself (`pam`, `gssapi`) or that a target may not have
/// loaded are refused.
pub const PLUGINS: [&str; 4] = ["mysql_native_password", "ed25519", "unix_socket", "parsec"];

/// User names that are never an account's, whatever the account is called:
/// the server's own and Navette's loaders.
const RESERVED_USERS: [&str; 5] = ["root", "mysql", "mariadb.sys", "debian-sys-maint", "PUBLIC"];

/// Prefix of the per-copy users that load dumps (see `target::loader`).
pub const LOADER_PREFIX: &str = "navette_load_";

/// Whether `user` is one of `account`'s users: `account` itself or
/// `account_*` (the same rule the source uses to describe them), and not
/// a name the server or Navette reserves.
pub fn is_account_user(user: &str, account: &str) -> bool {
    let named = user == account
        || user
            .strip_prefix(account)
            .is_some_and(|rest| rest.starts_with('_'));
    named
        && !account.is_empty()
        && !RESERVED_USERS.contains(&user)
        && !user.starts_with(LOADER_PREFIX)
        && user.chars().count() <= 80
        && !user.chars().any(|c| c.is_control() || c == '\\')
}

/// Whether `host` can be a user's host on the target: a host name, an
/// address or a pattern (`%`, `192.168.%`, `10.0.0.0/255.0.0.0`), never
/// empty (an empty host is a role).
pub fn is_user_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '%' | '_' | '.' | '-' | ':' | '/'))
}

/// One way to authenticate: `IDENTIFIED VIA plugin [USING 'string']`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authentication {
    pub plugin: String,
    /// The hash or the plugin's string; `None`: none.
    pub using: Option<String>,
}

/// `REQUIRE ...`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Tls {
    /// Nothing said, or `REQUIRE NONE`.
    #[default]
    None,
    Ssl,
    X509,
    /// `ISSUER`, `SUBJECT`, `CIPHER` (any of them).
    Specified {
        issuer: Option<String>,
        subject: Option<String>,
        cipher: Option<String>,
    },
}

/// `PASSWORD EXPIRE ...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expiry {
    Now,
    Never,
    Default,
    IntervalDays(u64),
}

/// Resource limits a user may carry (`WITH ...`).
const LIMITS: [&str; 5] = [
    "MAX_QUERIES_PER_HOUR",
    "MAX_UPDATES_PER_HOUR",
    "MAX_CONNECTIONS_PER_HOUR",
    "MAX_USER_CONNECTIONS",
    "MAX_STATEMENT_TIME",
];

/// A user's definition, parsed from the source's `SHOW CREATE USER`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserSpec {
    pub user: String,
    pub host: String,
    /// Empty: no authentication (no password).
    pub authentication: Vec<Authentication>,
    pub tls: Tls,
    /// `(MAX_..., value)`, keywords from [`LIMITS`].
    pub limits: Vec<(&'static str, String)>,
    pub expiry: Option<Expiry>,
    pub locked: Option<bool>,
}

/// A token of a `SHOW CREATE USER` text.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    /// A keyword or bare name, as written.
    Word(String),
    /// A quoted string or identifier, unquoted.
    Quoted(String),
    At,
}

fn tokens(text: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '@' {
            chars.next();
            out.push(Token::At);
        } else if c == '\'' || c == '`' || c == '"' {
            chars.next();
            let mut value = String::new();
            loop {
                match chars.next() {
                    None => return Err(format!("an unterminated {c}quoted{c} name or string")),
                    Some('\\') if c != '`' => match chars.next() {
                        Some('n') => value.push('\n'),
                        Some('0') => value.push('\0'),
                        Some('Z') => value.push('\u{1a}'),
                        Some(other) => value.push(other),
                        None => return Err("a string ending in '\\'".to_owned()),
                    },
                    Some(q) if q == c => {
                        if chars.peek() == Some(&c) {
                            chars.next();
                            value.push(c);
                        } else {
                            break;
                        }
                    }
                    Some(other) => value.push(other),
                }
            }
            out.push(Token::Quoted(value));
        } else if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
            let mut word = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
                    word.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
            out.push(Token::Word(word));
        } else {
            return Err(format!("{c:?}"));
        }
    }
    Ok(out)
}

/// Reads tokens one at a time, keywords case-insensitively.
struct Reader {
    tokens: std::vec::IntoIter<Token>,
    peeked: Option<Token>,
}

impl Reader {
    fn peek(&mut self) -> Option<&Token> {
        if self.peeked.is_none() {
            self.peeked = self.tokens.next();
        }
        self.peeked.as_ref()
    }

    fn next(&mut self) -> Option<Token> {
        self.peek();
        self.peeked.take()
    }

    /// Consumes the keyword `word` if it comes next.
    fn keyword(&mut self, word: &str) -> bool {
        match self.peek() {
            Some(Token::Word(w)) if w.eq_ignore_ascii_case(word) => {
                self.next();
                true
            }
            _ => false,
        }
    }

    fn expect(&mut self, word: &str) -> Result<(), String> {
        if self.keyword(word) {
            Ok(())
        } else {
            Err(format!("{word} expected, found {}", describe(self.peek())))
        }
    }

    fn string(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Token::Quoted(value)) => Ok(value),
            other => Err(format!(
                "a string expected, found {}",
                describe(other.as_ref())
            )),
        }
    }

    fn name(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Token::Quoted(value) | Token::Word(value)) => Ok(value),
            other => Err(format!(
                "a name expected, found {}",
                describe(other.as_ref())
            )),
        }
    }

    fn number(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Token::Word(w)) if is_number(&w) => Ok(w),
            other => Err(format!(
                "a number expected, found {}",
                describe(other.as_ref())
            )),
        }
    }
}

fn is_number(word: &str) -> bool {
    let mut parts = word.splitn(2, '.');
    let whole = parts.next().unwrap_or_default();
    !whole.is_empty()
        && whole.chars().all(|c| c.is_ascii_digit())
        && parts
            .next()
            .is_none_or(|f| f.chars().all(|c| c.is_ascii_digit()))
}

fn describe(token: Option<&Token>) -> String {
    match token {
        None => "the end".to_owned(),
        Some(Token::Word(w)) => format!("{w:?}"),
        Some(Token::Quoted(q)) => format!("'{q}'"),
        Some(Token::At) => "'@'".to_owned(),
    }
}

/// Parses `SHOW CREATE USER` output for `user`@`host`; the error says what
/// was not understood (and so not applied).
pub fn parse_create_user(user: &str, host: &str, text: &str) -> Result<UserSpec, String> {
    let mut reader = Reader {
        tokens: tokens(text)
            .map_err(|what| format!("unexpected {what} in its definition"))?
            .into_iter(),
        peeked: None,
    };
    reader.expect("CREATE")?;
    reader.expect("USER")?;
    let named = reader.name()?;
    if reader.next() != Some(Token::At) {
        return Err("its definition names no host".to_owned());
    }
    let named_host = reader.name()?;
    if named != user || !named_host.eq_ignore_ascii_case(host) {
        return Err(format!(
            "its definition is for {named}@{named_host}, another user"
        ));
    }
    let mut spec = UserSpec {
        user: user.to_owned(),
        host: host.to_owned(),
        ..UserSpec::default()
    };
    while reader.peek().is_some() {
        if reader.keyword("IDENTIFIED") {
            if reader.keyword("BY") {
                reader.expect("PASSWORD")?;
                spec.authentication.push(Authentication {
                    plugin: "mysql_native_password".to_owned(),
                    using: Some(reader.string()?),
                });
            } else {
                if !reader.keyword("VIA") {
                    reader.expect("WITH")?;
                }
                loop {
                    let plugin = reader.name()?;
                    if !PLUGINS.contains(&plugin.as_str()) {
                        return Err(format!(
                            "authentication plugin {plugin:?} is not accepted (only {})",
                            PLUGINS.join(", ")
                        ));
                    }
                    let using = if reader.keyword("USING") || reader.keyword("AS") {
                        Some(reader.string()?)
                    } else {
                        None
                    };
                    spec.authentication.push(Authentication { plugin, using });
                    if !reader.keyword("OR") {
                        break;
                    }
                }
            }
        } else if reader.keyword("REQUIRE") {
            spec.tls = parse_tls(&mut reader)?;
        } else if reader.keyword("WITH") {
            let mut any = false;
            while let Some(Token::Word(word)) = reader.peek() {
                let Some(limit) = LIMITS.iter().find(|l| l.eq_ignore_ascii_case(word)) else {
                    break;
                };
                reader.next();
                spec.limits.push((limit, reader.number()?));
                any = true;
            }
            if !any {
                return Err(format!("unexpected {} after WITH", describe(reader.peek())));
            }
        } else if reader.keyword("PASSWORD") {
            reader.expect("EXPIRE")?;
            spec.expiry = Some(if reader.keyword("NEVER") {
                Expiry::Never
            } else if reader.keyword("DEFAULT") {
                Expiry::Default
            } else if reader.keyword("INTERVAL") {
                let days = reader.number()?;
                reader.expect("DAY")?;
                Expiry::IntervalDays(days.parse().map_err(|_| format!("{days} days"))?)
            } else {
                Expiry::Now
            });
        } else if reader.keyword("ACCOUNT") {
            spec.locked = Some(if reader.keyword("LOCK") {
                true
            } else {
                reader.expect("UNLOCK")?;
                false
            });
        } else {
            return Err(format!(
                "unexpected {} in its definition",
                describe(reader.peek())
            ));
        }
    }
    Ok(spec)
}

fn parse_tls(reader: &mut Reader) -> Result<Tls, String> {
    if reader.keyword("NONE") {
        return Ok(Tls::None);
    }
    if reader.keyword("SSL") {
        return Ok(Tls::Ssl);
    }
    if reader.keyword("X509") {
        return Ok(Tls::X509);
    }
    let (mut issuer, mut subject, mut cipher) = (None, None, None);
    loop {
        if reader.keyword("ISSUER") {
            issuer = Some(reader.string()?);
        } else if reader.keyword("SUBJECT") {
            subject = Some(reader.string()?);
        } else if reader.keyword("CIPHER") {
            cipher = Some(reader.string()?);
        } else {
            break;
        }
        reader.keyword("AND");
    }
    if issuer.is_none() && subject.is_none() && cipher.is_none() {
        return Err(format!(
            "unexpected {} after REQUIRE",
            describe(reader.peek())
        ));
    }
    Ok(Tls::Specified {
        issuer,
        subject,
        cipher,
    })
}

impl UserSpec {
    /// `'user'@'host'`.
    pub fn grantee(&self) -> String {
        format!("{}@{}", literal(&self.user), literal(&self.host))
    }

    /// The options after the grantee, built from the fields.
    fn options(&self) -> String {
        let mut sql = String::new();
        for (index, auth) in self.authentication.iter().enumerate() {
            sql.push_str(if index == 0 {
                " IDENTIFIED VIA "
            } else {
                " OR "
            });
            sql.push_str(&auth.plugin);
            if let Some(using) = &auth.using {
                sql.push_str(" USING ");
                sql.push_str(&literal(using));
            }
        }
        match &self.tls {
            Tls::None => sql.push_str(" REQUIRE NONE"),
            Tls::Ssl => sql.push_str(" REQUIRE SSL"),
            Tls::X509 => sql.push_str(" REQUIRE X509"),
            Tls::Specified {
                issuer,
                subject,
                cipher,
            } => {
                let parts: Vec<String> =
                    [("ISSUER", issuer), ("SUBJECT", subject), ("CIPHER", cipher)]
                        .into_iter()
                        .filter_map(|(word, value)| {
                            value.as_ref().map(|v| format!("{word} {}", literal(v)))
                        })
                        .collect();
                sql.push_str(" REQUIRE ");
                sql.push_str(&parts.join(" AND "));
            }
        }
        if !self.limits.is_empty() {
            sql.push_str(" WITH");
            for (limit, value) in &self.limits {
                sql.push_str(&format!(" {limit} {value}"));
            }
        }
        match &self.expiry {
            None => {}
            Some(Expiry::Now) => sql.push_str(" PASSWORD EXPIRE"),
            Some(Expiry::Never) => sql.push_str(" PASSWORD EXPIRE NEVER"),
            Some(Expiry::Default) => sql.push_str(" PASSWORD EXPIRE DEFAULT"),
            Some(Expiry::IntervalDays(days)) => {
                sql.push_str(&format!(" PASSWORD EXPIRE INTERVAL {days} DAY"));
            }
        }
        match self.locked {
            None => {}
            Some(true) => sql.push_str(" ACCOUNT LOCK"),
            Some(false) => sql.push_str(" ACCOUNT UNLOCK"),
        }
        sql
    }

    /// `CREATE USER IF NOT EXISTS` and `ALTER USER`: the target's user as
    /// the source's, whether it existed or not. Without authentication the
    /// user gets none either (as on the source).
    pub fn ensure_sql(&self) -> String {
        let grantee = self.grantee();
        let options = self.options();
        let alter_auth = if self.authentication.is_empty() {
            // ALTER USER keeps the old authentication when none is named:
            // make it "none" explicitly, as on the source.
            " IDENTIFIED VIA mysql_native_password USING ''"
        } else {
            ""
        };
        format!(
            "CREATE USER IF NOT EXISTS {grantee}{options};\nALTER USER {grantee}{alter_auth}{options};\n"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accounts_users_are_named_after_it() {
        assert!(is_account_user("alice", "alice"));
        assert!(is_account_user("alice_ro", "alice"));
        assert!(!is_account_user("alicex", "alice"));
        assert!(!is_account_user("bob", "alice"));
        assert!(!is_account_user("root", "root"));
        assert!(!is_account_user("navette_load_1", "navette"));
        assert!(is_user_host("%") && is_user_host("10.0.%") && is_user_host("localhost"));
        assert!(!is_user_host("") && !is_user_host("a' OR 1"));
    }

    #[test]
    fn a_definition_is_rebuilt_from_its_fields() -> Result<(), String> {
        let shown = "CREATE USER `alice`@`%` IDENTIFIED BY PASSWORD '*D821809F681A40A6E379B50D0463EFAE20BDD122' REQUIRE SSL WITH MAX_USER_CONNECTIONS 5 PASSWORD EXPIRE INTERVAL 30 DAY ACCOUNT LOCK";
        let spec = parse_create_user("alice", "%", shown)?;
        assert_eq!(
            spec.ensure_sql(),
            "CREATE USER IF NOT EXISTS 'alice'@'%' IDENTIFIED VIA mysql_native_password USING '*D821809F681A40A6E379B50D0463EFAE20BDD122' REQUIRE SSL WITH MAX_USER_CONNECTIONS 5 PASSWORD EXPIRE INTERVAL 30 DAY ACCOUNT LOCK;\n\
             ALTER USER 'alice'@'%' IDENTIFIED VIA mysql_native_password USING '*D821809F681A40A6E379B50D0463EFAE20BDD122' REQUIRE SSL WITH MAX_USER_CONNECTIONS 5 PASSWORD EXPIRE INTERVAL 30 DAY ACCOUNT LOCK;\n"
        );
        let either = parse_create_user(
            "alice_x",
            "localhost",
            "CREATE USER `alice_x`@`localhost` IDENTIFIED VIA ed25519 USING 'abc' OR unix_socket",
        )?;
        assert_eq!(either.authentication.len(), 2);
        assert!(
            parse_create_user("alice", "%", "CREATE USER `alice`@`%`")?
                .authentication
                .is_empty()
        );
        Ok(())
    }

    #[test]
    fn anything_else_in_a_definition_is_refused() {
        for (user, text) in [
            // A second user in the same ALTER USER.
            (
                "alice",
                "CREATE USER `alice`@`%` IDENTIFIED BY PASSWORD 'x', `root`@`localhost` IDENTIFIED BY 'pwned'",
            ),
            (
                "alice",
                "CREATE USER `alice`@`%` IDENTIFIED BY PASSWORD 'x'; DROP DATABASE mysql",
            ),
            ("alice", "CREATE USER `root`@`localhost`"),
            (
                "alice",
                "CREATE USER `alice`@`%` IDENTIFIED VIA pam USING 'login'",
            ),
            ("alice", "CREATE USER `alice`@`%` DEFAULT ROLE admin"),
            ("alice", "CREATE USER `alice`@`%` IDENTIFIED BY PASSWORD 'x"),
        ] {
            assert!(parse_create_user(user, "%", text).is_err(), "{text}");
        }
    }
}
