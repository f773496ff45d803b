//! The reading of `mariadb-binlog --base64-output=DECODE-ROWS --verbose`
//! text into touched keys: a pure parser, fed line by line (bytes: row
//! values are printed as the column's raw bytes, not always UTF-8).
//!
//! What the tool prints (MariaDB 10.11, checked against a real server):
//!
//! ```text
//! ### UPDATE `shop`.`orders`
//! ### WHERE
//! ###   @1=-1 (4294967295)
//! ###   @2='it's a \ test\x0aline2'
//! ###   @5='2024:01:02'
//! ### SET
//! ###   @1=2
//! ###   @2=NULL
//! ```
//!
//! Integers are printed signed, followed by the unsigned reading in
//! parentheses when negative; strings between single quotes with every
//! byte below 0x20 as `\xHH` and every other byte as it is, quotes and
//! backslashes included (the tool's escaping of those is dead code). A
//! string value is therefore the whole rest of its line between the first
//! and last quote, and `\x0a` in it is either a newline or those four
//! characters: [`candidates`] gives both readings (a key that does not
//! exist matches no row on either side). DATE is `'YYYY:MM:DD'`, TIMESTAMP
//! seconds since the epoch, ENUM its index.
//!
//! Statement (Query) events are printed verbatim: every line up to the
//! next `# at` is read as the statement's text, so a statement holding
//! lines that look like rows adds none; one holding a `# at` line is cut
//! there (attributed by its first words) and the rest of its text can add
//! keys or whole tables, never hide a row (module documentation of the
//! parent).

use std::collections::{BTreeMap, BTreeSet};

use super::statement::{Statement, Words, read_ident, statement_tables};
use super::{Catalog, KeyValue, Table, TableName, Touched};

/// More readings of one key than this and the table is compared whole.
const MAX_CANDIDATES: usize = 64;

/// What the line being read belongs to.
#[derive(Debug, Default)]
enum State {
    #[default]
    Outside,
    /// A row's lines: its table, the image being read (false: before,
    /// `WHERE`; true: after, `SET`) and the `@N` values of each image.
    Row {
        table: TableName,
        after: bool,
        before_values: BTreeMap<usize, Vec<u8>>,
        after_values: BTreeMap<usize, Vec<u8>>,
        broken: Option<String>,
    },
    /// A Query event's lines: the statement read so far.
    Query { statement: Vec<u8> },
}

/// The parser: [`Reader::line`] for each line, then [`Reader::finish`].
#[derive(Debug)]
pub struct Reader<'a> {
    databases: &'a BTreeSet<String>,
    catalog: &'a Catalog,
    state: State,
    /// The statements' default database (`use` lines, printed when it
    /// changes).
    current_database: Option<String>,
    touched: Touched,
}

impl<'a> Reader<'a> {
    /// A reader keeping the changes of `databases`, whose tables' columns
    /// and keys are `catalog`'s.
    pub fn new(databases: &'a BTreeSet<String>, catalog: &'a Catalog) -> Reader<'a> {
        Reader {
            databases,
            catalog,
            state: State::Outside,
            current_database: None,
            touched: Touched::default(),
        }
    }

    /// Reads one line (without its `\n`).
    pub fn line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.starts_with(b"# at ")
            || line == b"# End of log file"
            || line.starts_with(b"DELIMITER ")
        {
            self.end_event();
            return;
        }
        if let State::Query { statement } = &mut self.state {
            // Up to the next event, everything is statement text, lines
            // that look like rows included.
            match line.strip_suffix(b"/*!*/;") {
                Some(last) => {
                    statement.extend_from_slice(last);
                    let text = std::mem::take(statement);
                    self.statement(&text);
                }
                None => {
                    statement.extend_from_slice(line);
                    statement.push(b'\n');
                }
            }
            return;
        }
        if let Some(rest) = line.strip_prefix(b"### ") {
            self.row_line(rest);
            return;
        }
        self.end_row();
        if line.starts_with(b"#") {
            // An event header: `#261202 16:29:20 server id 1 ... \tQuery\t...`.
            if line.windows(7).any(|w| w == b"\tQuery\t") {
                self.state = State::Query {
                    statement: Vec::new(),
                };
            }
        }
    }

    /// The touched keys of every line read.
    pub fn finish(mut self) -> Touched {
        self.end_event();
        self.touched
    }

    /// Ends the event being read: its row, or its statement left without
    /// its terminator (a statement whose own text holds a `# at` line is
    /// still read from its first words; the text after that line is read
    /// as the tool's own, which can add keys or whole tables only).
    fn end_event(&mut self) {
        self.end_row();
        if let State::Query { statement } = std::mem::take(&mut self.state)
            && statement.iter().any(|b| !b.is_ascii_whitespace())
        {
            self.statement(&statement);
        }
    }

    fn row_line(&mut self, rest: &[u8]) {
        for (prefix, first_after) in [
            (&b"INSERT INTO "[..], true),
            (&b"UPDATE "[..], false),
            (&b"DELETE FROM "[..], false),
        ] {
            if let Some(name) = rest.strip_prefix(prefix) {
                self.end_row();
                match parse_table(name) {
                    Some(table) => {
                        self.state = State::Row {
                            table,
                            after: first_after,
                            before_values: BTreeMap::new(),
                            after_values: BTreeMap::new(),
                            broken: None,
                        }
                    }
                    None => {
                        self.touched.notes.push(format!(
                            "a row event whose table could not be read: {}",
                            String::from_utf8_lossy(name)
                        ));
                        self.state = State::Outside;
                    }
                }
                return;
            }
        }
        let State::Row {
            after,
            before_values,
            after_values,
            broken,
            ..
        } = &mut self.state
        else {
            return;
        };
        match rest {
            b"WHERE" => *after = false,
            b"SET" => *after = true,
            _ => {
                let parsed = rest.strip_prefix(b"  @").and_then(|column| {
                    let equals = column.iter().position(|&b| b == b'=')?;
                    let number: usize =
                        std::str::from_utf8(&column[..equals]).ok()?.parse().ok()?;
                    Some((number, column[equals + 1..].to_vec()))
                });
                match parsed {
                    Some((number, value)) => {
                        let image = if *after { after_values } else { before_values };
                        image.insert(number, value);
                    }
                    None => {
                        *broken = Some(format!(
                            "unreadable row line {:?}",
                            String::from_utf8_lossy(&rest[..rest.len().min(60)])
                        ))
                    }
                }
            }
        }
    }

    /// Ends the row being read, if any: its keys into the touched ones.
    fn end_row(&mut self) {
        if !matches!(self.state, State::Row { .. }) {
            return;
        }
        let State::Row {
            table,
            before_values,
            after_values,
            broken,
            ..
        } = std::mem::take(&mut self.state)
        else {
            return;
        };
        if !self.databases.contains(&table.database) {
            return;
        }
        if let Some(reason) = broken {
            self.touched.mark_whole(&table, reason);
            return;
        }
        let Some(shape) = self.catalog.tables.get(&table) else {
            self.touched.mark_whole(
                &table,
                "not a base table of the catalog now (dropped or renamed since?)".to_owned(),
            );
            return;
        };
        let columns = shape.columns.len();
        let widest = before_values.keys().chain(after_values.keys()).max();
        if widest.is_some_and(|&widest| widest > columns) {
            self.touched.mark_whole(
                &table,
                format!(
                    "a row of the binary log has more columns than the catalog's {columns} (changed since?)"
                ),
            );
            return;
        }
        // An after image without the key's columns (binlog_row_image
        // MINIMAL or NOBLOB) kept the before image's key.
        let mut after_values = after_values;
        if let (Ok(key), false) = (&shape.key, after_values.is_empty()) {
            for &index in key {
                if let Some(value) = before_values.get(&(index + 1)) {
                    after_values
                        .entry(index + 1)
                        .or_insert_with(|| value.clone());
                }
            }
        }
        for image in [&before_values, &after_values] {
            if image.is_empty() {
                continue;
            }
            match image_keys(shape, image) {
                Ok(keys) => self.touched.add_keys(&table, keys),
                Err(reason) => {
                    self.touched.mark_whole(&table, reason);
                    return;
                }
            }
        }
    }

    /// A Query event's statement: `use`, transaction control and session
    /// settings are read or skipped; a statement on tables of the
    /// databases marks them whole; anything else touching them is noted.
    fn statement(&mut self, text: &[u8]) {
        let text = String::from_utf8_lossy(text);
        let trimmed = text.trim();
        // The tool's own character set switch, `/*!\C utf8mb4 */`.
        if trimmed.starts_with("/*!\\C ") {
            return;
        }
        if let Some((database, "")) = trimmed.strip_prefix("use ").and_then(read_ident) {
            self.current_database = Some(database);
            return;
        }
        let words = Words::new(trimmed);
        match statement_tables(words, self.current_database.as_deref()) {
            Statement::NoRows => {}
            Statement::Tables(what, tables) => {
                for table in tables {
                    if self.databases.contains(&table.database) {
                        self.touched
                            .mark_whole(&table, format!("{what} in the binary log"));
                    }
                }
            }
            Statement::Database(name) => {
                if self.databases.contains(&name) {
                    self.touched
                        .notes
                        .push(format!("database {name}: {}", abbreviate(trimmed)));
                }
            }
            Statement::Unknown => {
                let in_database = self
                    .current_database
                    .as_ref()
                    .is_some_and(|db| self.databases.contains(db))
                    || self
                        .databases
                        .iter()
                        .any(|db| trimmed.contains(db.as_str()));
                if in_database {
                    self.touched.notes.push(format!(
                        "a statement not tied to a table: {}",
                        abbreviate(trimmed)
                    ));
                }
            }
        }
    }
}

fn abbreviate(text: &str) -> String {
    let mut out: String = text.chars().take(120).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out.replace('\n', " ")
}

/// The keys an image names: each reading of its key columns' values.
fn image_keys(
    shape: &Table,
    image: &BTreeMap<usize, Vec<u8>>,
) -> Result<Vec<Vec<KeyValue>>, String> {
    let key = shape.key.as_ref().map_err(Clone::clone)?;
    let columns = shape.key_columns()?;
    let mut keys: Vec<Vec<KeyValue>> = vec![Vec::new()];
    for (&index, column) in key.iter().zip(columns) {
        let printed = image
            .get(&(index + 1))
            .ok_or_else(|| format!("key column {} missing from a row image", column.name))?;
        let readings = read_value(column, printed).ok_or_else(|| {
            format!(
                "key column {} value {:?} could not be read",
                column.name,
                String::from_utf8_lossy(&printed[..printed.len().min(60)])
            )
        })?;
        let mut next = Vec::with_capacity(keys.len() * readings.len());
        for key in &keys {
            for reading in &readings {
                let mut key = key.clone();
                key.push(reading.clone());
                next.push(key);
            }
        }
        if next.len() > MAX_CANDIDATES {
            return Err(format!(
                "a key has more than {MAX_CANDIDATES} readings (\\xHH escapes)"
            ));
        }
        keys = next;
    }
    Ok(keys)
}

/// The readings of one printed value of `column` (one, except for strings
/// with `\xHH` escapes); `None` when it cannot be read (NULL included: key
/// columns are NOT NULL).
pub(super) fn read_value(column: &super::Column, printed: &[u8]) -> Option<Vec<KeyValue>> {
    use super::KeyKind;
    let text = || std::str::from_utf8(printed).ok();
    match column.kind()? {
        KeyKind::Integer => {
            let text = text()?;
            let (signed, unsigned) = match text.split_once(" (") {
                Some((signed, rest)) => (signed, Some(rest.strip_suffix(')')?)),
                None => (text, None),
            };
            let value = match (column.unsigned, unsigned) {
                (true, Some(unsigned)) => unsigned,
                _ => signed,
            };
            is_integer(value).then(|| vec![KeyValue::Number(value.to_owned())])
        }
        KeyKind::Decimal => {
            let text = text()?;
            let digits = text.strip_prefix('-').unwrap_or(text);
            let ok = !digits.is_empty()
                && digits.bytes().all(|b| b.is_ascii_digit() || b == b'.')
                && digits.bytes().filter(|&b| b == b'.').count() <= 1;
            ok.then(|| vec![KeyValue::Number(text.to_owned())])
        }
        KeyKind::Enum => {
            let text = text()?;
            (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
                .then(|| vec![KeyValue::Number(text.to_owned())])
        }
        KeyKind::Date => {
            let inner = text()?.strip_prefix('\'')?.strip_suffix('\'')?;
            let date = inner.replace(':', "-");
            is_temporal(&date).then(|| vec![KeyValue::Temporal(date)])
        }
        KeyKind::DateTime => {
            let inner = text()?.strip_prefix('\'')?.strip_suffix('\'')?;
            is_temporal(inner).then(|| vec![KeyValue::Temporal(inner.to_owned())])
        }
        KeyKind::Timestamp => {
            let text = text()?;
            let ok = !text.is_empty()
                && text.bytes().all(|b| b.is_ascii_digit() || b == b'.')
                && text.bytes().filter(|&b| b == b'.').count() <= 1;
            ok.then(|| vec![KeyValue::UnixTime(text.to_owned())])
        }
        KeyKind::Bytes => {
            let inner = printed.strip_prefix(b"'")?.strip_suffix(b"'")?;
            let mut readings = candidates(inner);
            if let Some(length) = column.fixed_binary_length {
                for reading in &mut readings {
                    if reading.len() < length {
                        reading.resize(length, 0);
                    }
                }
            }
            (readings.len() <= MAX_CANDIDATES)
                .then(|| readings.into_iter().map(KeyValue::Bytes).collect())
        }
    }
}

fn is_integer(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// `YYYY-MM-DD[ HH:MM:SS[.ffffff]]`: digits and those separators only.
fn is_temporal(text: &str) -> bool {
    text.len() >= 10
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b':' | b' ' | b'.'))
}

/// Every reading of a printed string's bytes: each `\xHH` with HH below
/// 0x20 is that byte or the four characters as they are. Stops as soon
/// as there are more than 64 (the caller's "too many").
pub fn candidates(printed: &[u8]) -> Vec<Vec<u8>> {
    let mut readings: Vec<Vec<u8>> = vec![Vec::with_capacity(printed.len())];
    let mut at = 0;
    while at < printed.len() {
        let escape = printed
            .get(at..at + 4)
            .filter(|four| four.starts_with(b"\\x"))
            .and_then(|four| std::str::from_utf8(&four[2..]).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            .filter(|&byte| byte < 0x20);
        match escape {
            Some(byte) => {
                let mut next = Vec::with_capacity(readings.len() * 2);
                for reading in readings {
                    let mut as_byte = reading.clone();
                    as_byte.push(byte);
                    let mut as_text = reading;
                    as_text.extend_from_slice(&printed[at..at + 4]);
                    next.push(as_byte);
                    next.push(as_text);
                }
                readings = next;
                if readings.len() > MAX_CANDIDATES {
                    return readings;
                }
                at += 4;
            }
            None => {
                for reading in &mut readings {
                    reading.push(printed[at]);
                }
                at += 1;
            }
        }
    }
    readings
}

/// `` `db`.`table` `` as the tool prints it (backquotes doubled inside).
fn parse_table(text: &[u8]) -> Option<TableName> {
    let text = std::str::from_utf8(text).ok()?;
    let (database, rest) = read_ident(text)?;
    let (name, rest) = read_ident(rest.strip_prefix('.')?)?;
    rest.is_empty().then_some(TableName { database, name })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_give_every_reading() {
        assert_eq!(candidates(b"it's \\ ok"), vec![b"it's \\ ok".to_vec()]);
        assert_eq!(
            candidates(b"a\\x0ab"),
            vec![b"a\nb".to_vec(), b"a\\x0ab".to_vec()]
        );
        // \x41 is never an escape: the tool prints 'A' itself.
        assert_eq!(candidates(b"\\x41"), vec![b"\\x41".to_vec()]);
        assert_eq!(candidates(b"\\x00\\x1f").len(), 4);
    }

    #[test]
    fn table_names_are_unquoted() {
        assert_eq!(
            parse_table(b"`we``ird db`.`li\"nes t`"),
            Some(TableName {
                database: "we`ird db".into(),
                name: "li\"nes t".into()
            })
        );
        assert_eq!(parse_table(b"`shop`.`orders` junk"), None);
    }
}
