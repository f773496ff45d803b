//! Which PostgreSQL rows changed since the last verification, read from the
//! text the `test_decoding` output plugin writes for a logical slot
//! (contrib, present on every server): one line per change, such as
//!
//! ```text
//! table public.orders: UPDATE: id[integer]:7 note[text]:'it''s paid'
//! table public.orders: UPDATE: old-key: id[integer]:7 new-tuple: id[integer]:8 note[text]:null
//! table public.orders: DELETE: id[integer]:8
//! ```
//!
//! [`parse_change`] turns a line into the table and the column values it
//! names (the old key when the key changed, and the new tuple), so that the
//! caller can fingerprint the touched keys' rows on both sides. A line it
//! cannot read is an error naming the table when it can, so that table is
//! compared whole rather than silently skipped. [`Touched`] gathers the
//! touched keys per table; [`super::postgres_rows`] fingerprints them.

/// A table as `test_decoding` names it (identifiers unquoted).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    pub schema: String,
    pub name: String,
}

/// One column value of a change: `None` for SQL NULL; a TOASTed value left
/// unchanged by an UPDATE is [`Value::UnchangedToast`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    UnchangedToast,
    /// The value's text form (quotes removed, `''` unescaped).
    Text(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub type_name: String,
    pub value: Value,
}

/// What a change does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Insert,
    Update,
    Delete,
    Truncate,
}

/// One decoded change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub table: TableName,
    pub operation: Operation,
    /// The old key (UPDATE whose key changed, or any UPDATE/DELETE of a
    /// table with `REPLICA IDENTITY FULL`: then every column); for a DELETE
    /// the row's key.
    pub old: Vec<Column>,
    /// The new row (INSERT, UPDATE).
    pub new: Vec<Column>,
}

/// A line that is a change but could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("test_decoding line for {table}: {reason}")]
pub struct ParseError {
    /// The table, or `?` when not even it could be read.
    pub table: String,
    pub reason: &'static str,
}

/// The change on `line`, or `None` for lines that are not changes (`BEGIN`,
/// `COMMIT`, messages).
pub fn parse_change(line: &str) -> Result<Option<Change>, ParseError> {
    let Some(rest) = line.strip_prefix("table ") else {
        return Ok(None);
    };
    let unreadable = |table: &str, reason| ParseError {
        table: table.to_owned(),
        reason,
    };
    let (table, rest) = read_name(rest).ok_or_else(|| unreadable("?", "table name"))?;
    let (schema, name) = split_table(&table).ok_or_else(|| unreadable(&table, "table name"))?;
    let rest = rest
        .strip_prefix(": ")
        .ok_or_else(|| unreadable(&table, "no operation"))?;
    let (operation, rest) = rest
        .split_once(": ")
        .or_else(|| rest.split_once(':'))
        .ok_or_else(|| unreadable(&table, "no operation"))?;
    let operation = match operation {
        "INSERT" => Operation::Insert,
        "UPDATE" => Operation::Update,
        "DELETE" => Operation::Delete,
        "TRUNCATE" => Operation::Truncate,
        _ => return Err(unreadable(&table, "unknown operation")),
    };
    let mut change = Change {
        table: TableName { schema, name },
        operation,
        old: Vec::new(),
        new: Vec::new(),
    };
    if operation == Operation::Truncate || rest.starts_with("(no-tuple data)") {
        return Ok(Some(change));
    }
    let (old, new) = match rest.strip_prefix("old-key: ") {
        Some(rest) => {
            let (old, rest) = read_columns(rest, Some(" new-tuple: "))
                .ok_or_else(|| unreadable(&table, "old key"))?;
            let rest = rest
                .strip_prefix(" new-tuple: ")
                .ok_or_else(|| unreadable(&table, "no new tuple"))?;
            let (new, _) = read_columns(rest, None).ok_or_else(|| unreadable(&table, "columns"))?;
            (old, new)
        }
        None => {
            let (columns, _) =
                read_columns(rest, None).ok_or_else(|| unreadable(&table, "columns"))?;
            match operation {
                Operation::Delete => (columns, Vec::new()),
                _ => (Vec::new(), columns),
            }
        }
    };
    change.old = old;
    change.new = new;
    Ok(Some(change))
}

/// `schema.name`, each part possibly double-quoted, split in two.
pub(crate) fn split_table(table: &str) -> Option<(String, String)> {
    let (schema, rest) = read_ident(table)?;
    let (name, rest) = read_ident(rest.strip_prefix('.')?)?;
    rest.is_empty().then_some((schema, name))
}

/// An identifier, double-quoted (`""` escaping `"`) or plain up to `.`,
/// `[`, `:` or a space; returns it and what follows.
fn read_ident(text: &str) -> Option<(String, &str)> {
    if let Some(rest) = text.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = rest.char_indices();
        while let Some((at, c)) = chars.next() {
            if c == '"' {
                if rest[at + 1..].starts_with('"') {
                    out.push('"');
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
    let end = text.find(['.', '[', ':', ' ']).unwrap_or(text.len());
    (end > 0).then(|| (text[..end].to_owned(), &text[end..]))
}

/// The `schema.name` text up to the `: ` that ends it (quoted parts may hold
/// anything).
fn read_name(text: &str) -> Option<(String, &str)> {
    let (_, rest) = read_ident(text)?;
    let rest = rest.strip_prefix('.')?;
    let (_, rest) = read_ident(rest)?;
    let consumed = text.len() - rest.len();
    Some((text[..consumed].to_owned(), rest))
}

/// `name[type]:value` pairs separated by spaces, up to the end or `stop`.
fn read_columns<'a>(mut text: &'a str, stop: Option<&str>) -> Option<(Vec<Column>, &'a str)> {
    let mut columns = Vec::new();
    loop {
        if text.is_empty() || stop.is_some_and(|stop| text.starts_with(stop)) {
            return Some((columns, text));
        }
        let (name, rest) = read_ident(text)?;
        let rest = rest.strip_prefix('[')?;
        // Type names hold no `]` except array suffixes (`integer[]`).
        let mut end = rest.find("]:")?;
        while rest[..end].matches('[').count() > rest[..end].matches(']').count() {
            end = end + 1 + rest[end + 1..].find("]:")?;
        }
        let type_name = rest[..end].to_owned();
        let rest = &rest[end + 2..];
        let (value, rest) = read_value(rest)?;
        columns.push(Column {
            name,
            type_name,
            value,
        });
        if rest.is_empty() || stop.is_some_and(|stop| rest.starts_with(stop)) {
            return Some((columns, rest));
        }
        text = rest.strip_prefix(' ')?;
    }
}

/// A value: `null`, `unchanged-toast-datum`, `'quoted'` with `''`, or a bare
/// token up to the next space.
fn read_value(text: &str) -> Option<(Value, &str)> {
    if let Some(rest) = text.strip_prefix('\'') {
        let mut out = String::new();
        let mut chars = rest.char_indices();
        while let Some((at, c)) = chars.next() {
            if c == '\'' {
                if rest[at + 1..].starts_with('\'') {
                    out.push('\'');
                    chars.next();
                } else {
                    return Some((Value::Text(out), &rest[at + 1..]));
                }
            } else {
                out.push(c);
            }
        }
        return None;
    }
    let end = text.find(' ').unwrap_or(text.len());
    let token = &text[..end];
    let value = match token {
        // Bit strings are written B'0101'.
        _ if token.len() >= 3 && token.starts_with("B'") && token.ends_with('\'') => {
            Value::Text(token[2..token.len() - 1].to_owned())
        }
        "null" => Value::Null,
        "unchanged-toast-datum" => Value::UnchangedToast,
        "" => return None,
        _ => Value::Text(token.to_owned()),
    };
    Some((value, &text[end..]))
}

/// The keys a run of changes touched, per table, and the tables that must
/// be compared whole (or reported as not verified when large): truncated,
/// without a known key, or whose key could not be read from a change.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Touched {
    /// Each touched key as its columns' text values (`None`: NULL, which
    /// only a table without a key has), in the key's order.
    pub keys:
        std::collections::BTreeMap<TableName, std::collections::BTreeSet<Vec<Option<String>>>>,
    pub whole: std::collections::BTreeSet<TableName>,
}

impl Touched {
    /// Adds `change`, whose table's key columns are `key` (`None`: no key
    /// known, the table is compared whole).
    pub fn add(&mut self, change: &Change, key: Option<&[String]>) {
        let Some(key) = key.filter(|key| !key.is_empty()) else {
            self.whole.insert(change.table.clone());
            return;
        };
        if change.operation == Operation::Truncate {
            self.whole.insert(change.table.clone());
            return;
        }
        for (row, old) in [(&change.old, true), (&change.new, false)] {
            if row.is_empty() {
                continue;
            }
            // An old tuple leaves out its NULL columns (a new one writes
            // them as `null`).
            let values: Option<Vec<Option<String>>> = key
                .iter()
                .map(
                    |name| match row.iter().find(|column| &column.name == name) {
                        Some(column) => match &column.value {
                            Value::Text(text) => Some(Some(text.clone())),
                            Value::Null => Some(None),
                            Value::UnchangedToast => None,
                        },
                        None if old => Some(None),
                        None => None,
                    },
                )
                .collect();
            match values {
                Some(values) => {
                    self.keys
                        .entry(change.table.clone())
                        .or_default()
                        .insert(values);
                }
                None => {
                    self.whole.insert(change.table.clone());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(name: &str, type_name: &str, value: &str) -> Column {
        Column {
            name: name.into(),
            type_name: type_name.into(),
            value: Value::Text(value.into()),
        }
    }

    #[test]
    fn changes_are_read_with_their_keys() -> Result<(), ParseError> {
        assert_eq!(parse_change("BEGIN 740")?, None);
        assert_eq!(parse_change("COMMIT 740")?, None);
        let insert = parse_change(
            "table public.orders: INSERT: id[integer]:7 note[text]:'it''s paid' tags[text[]]:'{a,b}' gone[text]:null",
        )?
        .ok_or(ParseError { table: "?".into(), reason: "none" })?;
        assert_eq!(insert.table.name, "orders");
        assert_eq!(insert.operation, Operation::Insert);
        assert_eq!(insert.new[0], text("id", "integer", "7"));
        assert_eq!(insert.new[1], text("note", "text", "it's paid"));
        assert_eq!(insert.new[2], text("tags", "text[]", "{a,b}"));
        assert_eq!(insert.new[3].value, Value::Null);

        let moved = parse_change(
            "table \"Shop\".\"my orders\": UPDATE: old-key: id[integer]:7 new-tuple: id[integer]:8 note[text]:'a b'",
        )?
        .ok_or(ParseError { table: "?".into(), reason: "none" })?;
        assert_eq!(moved.table.schema, "Shop");
        assert_eq!(moved.table.name, "my orders");
        assert_eq!(moved.old, [text("id", "integer", "7")]);
        assert_eq!(
            moved.new,
            [text("id", "integer", "8"), text("note", "text", "a b")]
        );

        let deleted =
            parse_change("table public.orders: DELETE: id[integer]:8")?.ok_or(ParseError {
                table: "?".into(),
                reason: "none",
            })?;
        assert_eq!(deleted.old, [text("id", "integer", "8")]);
        assert!(deleted.new.is_empty());

        let truncated =
            parse_change("table public.orders: TRUNCATE: (no-flags)")?.ok_or(ParseError {
                table: "?".into(),
                reason: "none",
            })?;
        assert_eq!(truncated.operation, Operation::Truncate);

        let broken = parse_change("table public.orders: UPDATE: note[text]:'never closed");
        assert_eq!(
            broken,
            Err(ParseError {
                table: "public.orders".into(),
                reason: "columns"
            })
        );
        Ok(())
    }

    #[test]
    fn touched_keys_and_their_query() -> Result<(), ParseError> {
        let key = vec!["id".to_owned()];
        let mut touched = Touched::default();
        for line in [
            "table public.orders: UPDATE: old-key: id[integer]:7 new-tuple: id[integer]:8 note[text]:'x'",
            "table public.orders: INSERT: id[integer]:9 note[text]:'y'",
            "table public.log: INSERT: at[text]:'now'",
        ] {
            if let Some(change) = parse_change(line)? {
                let key = (change.table.name == "orders").then_some(key.as_slice());
                touched.add(&change, key);
            }
        }
        let orders = TableName {
            schema: "public".into(),
            name: "orders".into(),
        };
        let keys: Vec<Vec<Option<String>>> = touched.keys[&orders].iter().cloned().collect();
        assert_eq!(
            keys,
            [
                vec![Some("7".to_owned())],
                vec![Some("8".into())],
                vec![Some("9".into())]
            ]
        );
        assert!(touched.whole.iter().any(|table| table.name == "log"));
        Ok(())
    }
}
