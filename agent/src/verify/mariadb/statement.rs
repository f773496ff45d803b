//! What a statement (Query event) of the binary log does to tables: the
//! tables a DDL names (ALTER, CREATE, DROP, RENAME, TRUNCATE, an index
//! change, REPAIR), statements that change no rows, and the rest, which
//! cannot be told. Read from the statement's words, comments skipped.

use super::TableName;

/// A backquoted identifier (`` `` `` inside for one backquote), or a bare
/// one (letters, digits, `_`, `$`, anything beyond ASCII); it and what
/// follows.
pub(super) fn read_ident(text: &str) -> Option<(String, &str)> {
    if let Some(rest) = text.strip_prefix('`') {
        let mut out = String::new();
        let mut chars = rest.char_indices();
        while let Some((at, c)) = chars.next() {
            if c == '`' {
                if rest[at + 1..].starts_with('`') {
                    out.push('`');
                    chars.next();
                } else {
                    return Some((out, &rest[at + 1..]));
                }
            } else {
                out.push(c);
            }
        }
        return None;
    }
    let end = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
        .unwrap_or(text.len());
    (end > 0).then(|| (text[..end].to_owned(), &text[end..]))
}

/// A statement's words: keywords upper-cased, identifiers as they are,
/// comments and spaces skipped.
pub(super) struct Words<'t> {
    rest: &'t str,
}

#[derive(Debug, PartialEq)]
enum Word {
    /// A bare word, upper-cased, with its original spelling.
    Bare(String, String),
    Quoted(String),
    Symbol(char),
}

impl<'t> Words<'t> {
    pub(super) fn new(text: &'t str) -> Words<'t> {
        Words { rest: text }
    }

    fn skip_blank(&mut self) {
        loop {
            self.rest = self.rest.trim_start();
            if let Some(rest) = self.rest.strip_prefix("/*") {
                // `/*!...*/` version comments hold SQL: read their content.
                if let Some(rest) = rest.strip_prefix('!').or_else(|| rest.strip_prefix("M!")) {
                    let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(0);
                    self.rest = &rest[digits..];
                    continue;
                }
                self.rest = rest.find("*/").map_or("", |end| &rest[end + 2..]);
            } else if self.rest.starts_with("*/") {
                self.rest = &self.rest[2..];
            } else if self.rest.starts_with("-- ") || self.rest.starts_with('#') {
                self.rest = self.rest.find('\n').map_or("", |end| &self.rest[end..]);
            } else {
                return;
            }
        }
    }

    fn next_word(&mut self) -> Option<Word> {
        self.skip_blank();
        let c = self.rest.chars().next()?;
        if c == '`' || c.is_alphanumeric() || c == '_' || c == '$' {
            let (ident, rest) = read_ident(self.rest)?;
            let quoted = c == '`';
            self.rest = rest;
            return Some(if quoted {
                Word::Quoted(ident)
            } else {
                Word::Bare(ident.to_ascii_uppercase(), ident)
            });
        }
        self.rest = &self.rest[c.len_utf8()..];
        Some(Word::Symbol(c))
    }

    /// Skips the keywords of `optional` that come next, in any order.
    fn skip(&mut self, optional: &[&str]) -> Option<Word> {
        loop {
            let word = self.next_word()?;
            match &word {
                Word::Bare(upper, _) if optional.contains(&upper.as_str()) => continue,
                _ => return Some(word),
            }
        }
    }

    /// A table name starting with `first`: `name` or `db.name`.
    fn table(&mut self, first: Word, current: Option<&str>) -> Option<TableName> {
        let first = match first {
            Word::Bare(_, original) => original,
            Word::Quoted(name) => name,
            Word::Symbol(_) => return None,
        };
        let save = self.rest;
        self.skip_blank();
        if let Some(rest) = self.rest.strip_prefix('.') {
            self.rest = rest;
            let name = match self.next_word()? {
                Word::Bare(_, original) => original,
                Word::Quoted(name) => name,
                Word::Symbol(_) => return None,
            };
            return Some(TableName {
                database: first,
                name,
            });
        }
        self.rest = save;
        Some(TableName {
            database: current?.to_owned(),
            name: first,
        })
    }
}

/// What a statement does to rows.
#[derive(Debug, PartialEq)]
pub(super) enum Statement {
    /// Changes no row of a table (transaction control, settings, routines,
    /// grants, statistics).
    NoRows,
    /// Changes or replaces these tables as a whole (its kind for the
    /// reason).
    Tables(&'static str, Vec<TableName>),
    /// Creates or drops a database.
    Database(String),
    /// Could not be told.
    Unknown,
}

pub(super) fn statement_tables(mut words: Words<'_>, current: Option<&str>) -> Statement {
    let Some(Word::Bare(first, _)) = words.next_word() else {
        return if words.rest.is_empty() {
            Statement::NoRows
        } else {
            Statement::Unknown
        };
    };
    let list = |words: &mut Words<'_>, what: &'static str, first: Option<Word>, pairs: bool| {
        let mut tables = Vec::new();
        let mut next = first;
        while let Some(word) = next.take() {
            let Some(table) = words.table(word, current) else {
                return Statement::Unknown;
            };
            tables.push(table);
            if pairs {
                match words.next_word() {
                    Some(Word::Bare(to, _)) if to == "TO" => {}
                    _ => return Statement::Unknown,
                }
                let Some(word) = words.next_word() else {
                    return Statement::Unknown;
                };
                let Some(table) = words.table(word, current) else {
                    return Statement::Unknown;
                };
                tables.push(table);
            }
            match words.next_word() {
                Some(Word::Symbol(',')) => next = words.next_word(),
                _ => break,
            }
        }
        if tables.is_empty() {
            Statement::Unknown
        } else {
            Statement::Tables(what, tables)
        }
    };
    match first.as_str() {
        "BEGIN" | "COMMIT" | "ROLLBACK" | "XA" | "SAVEPOINT" | "RELEASE" | "SET" | "START"
        | "GRANT" | "REVOKE" | "FLUSH" | "ANALYZE" | "OPTIMIZE" | "CHECK" | "DELIMITER" => {
            Statement::NoRows
        }
        "TRUNCATE" => {
            let word = words.skip(&["TABLE"]);
            list(&mut words, "TRUNCATE", word, false)
        }
        "REPAIR" => {
            let word = words.skip(&["NO_WRITE_TO_BINLOG", "LOCAL", "TABLE"]);
            list(&mut words, "REPAIR", word, false)
        }
        "RENAME" => match words.next_word() {
            Some(Word::Bare(table, _)) if table == "TABLE" => {
                let word = words.skip(&["IF", "EXISTS"]);
                list(&mut words, "RENAME TABLE", word, true)
            }
            Some(Word::Bare(_, _)) => Statement::NoRows,
            _ => Statement::Unknown,
        },
        "ALTER" | "CREATE" | "DROP" => {
            let what: &'static str = match first.as_str() {
                "ALTER" => "ALTER TABLE",
                "CREATE" => "CREATE TABLE",
                _ => "DROP TABLE",
            };
            let Some(Word::Bare(object, _)) = words.skip(&[
                "OR",
                "REPLACE",
                "TEMPORARY",
                "ONLINE",
                "IGNORE",
                "UNIQUE",
                "FULLTEXT",
                "SPATIAL",
            ]) else {
                return Statement::Unknown;
            };
            match object.as_str() {
                "TABLE" | "TABLES" => {
                    let word = words.skip(&["IF", "NOT", "EXISTS"]);
                    list(&mut words, what, word, false)
                }
                "INDEX" | "KEY" => {
                    // `CREATE INDEX i ON t`, `DROP INDEX i ON t`.
                    loop {
                        match words.next_word() {
                            Some(Word::Bare(on, _)) if on == "ON" => break,
                            Some(_) => continue,
                            None => return Statement::Unknown,
                        }
                    }
                    let word = words.next_word();
                    list(&mut words, "an index change", word, false)
                }
                "DATABASE" | "SCHEMA" => match words.skip(&["IF", "NOT", "EXISTS"]) {
                    Some(Word::Bare(_, name) | Word::Quoted(name)) => Statement::Database(name),
                    _ => Statement::Unknown,
                },
                "VIEW" | "TRIGGER" | "PROCEDURE" | "FUNCTION" | "EVENT" | "USER" | "ROLE"
                | "SERVER" | "DEFINER" | "ALGORITHM" | "SQL" | "AGGREGATE" | "PACKAGE" => {
                    Statement::NoRows
                }
                _ => Statement::Unknown,
            }
        }
        _ => Statement::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_name_their_tables() {
        let tables = |sql: &str| statement_tables(Words::new(sql), Some("shop"));
        let t = |db: &str, name: &str| TableName {
            database: db.into(),
            name: name.into(),
        };
        assert_eq!(
            tables("TRUNCATE shop.orders"),
            Statement::Tables("TRUNCATE", vec![t("shop", "orders")])
        );
        assert_eq!(
            tables("ALTER TABLE `we``ird`.`t 1` ADD COLUMN z INT"),
            Statement::Tables("ALTER TABLE", vec![t("we`ird", "t 1")])
        );
        assert_eq!(
            tables("DROP TABLE IF EXISTS `a`, other.b /* generated by server */"),
            Statement::Tables("DROP TABLE", vec![t("shop", "a"), t("other", "b")])
        );
        assert_eq!(
            tables("RENAME TABLE a TO b, c TO x.d"),
            Statement::Tables(
                "RENAME TABLE",
                vec![t("shop", "a"), t("shop", "b"), t("shop", "c"), t("x", "d")]
            )
        );
        assert_eq!(
            tables("CREATE OR REPLACE TABLE t2 (a int primary key) COMMENT 'x'"),
            Statement::Tables("CREATE TABLE", vec![t("shop", "t2")])
        );
        assert_eq!(
            tables("CREATE UNIQUE INDEX i ON orders (note)"),
            Statement::Tables("an index change", vec![t("shop", "orders")])
        );
        assert_eq!(
            tables("CREATE DEFINER=`a`@`%` TRIGGER x BEFORE INSERT ON t FOR EACH ROW SET @a = 1"),
            Statement::NoRows
        );
        assert_eq!(tables("START TRANSACTION"), Statement::NoRows);
        assert_eq!(
            tables("CREATE DATABASE `shop`"),
            Statement::Database("shop".into())
        );
        assert_eq!(tables("INSERT INTO t SELECT 1"), Statement::Unknown);
    }
}
