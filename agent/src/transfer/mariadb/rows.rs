//! Rows as canonical SQL literals, and the checksum built on them.
//!
//! The server itself turns each row into the literal the target inserts,
//! `(1,'Zoë 😀',X'00FF',b'101',NULL)`, column by column according to a
//! [`MariadbColumnEncoding`]. The same literal is the checksum's input: the
//! checksum of a table is its row count and the exact sum of the first 64
//! bits (big-endian) of the SHA-256 of every row literal.
//!
//! - The source computes it in Rust ([`RowChecksum`]) over the literals it
//!   streams, so it describes exactly the rows sent, whatever the engine.
//! - The target computes it in SQL ([`checksum_sql`]) over its copy, with
//!   the encodings the source used; no row is read back.
//!
//! Why not `CHECKSUM TABLE`: its result depends on the row format, the
//! engine and the server version (and changed between MariaDB versions for
//! the same data), so two equal tables on 10.11 and 11.8 may disagree. A sum
//! of per-row hashes depends only on the values, not on their order, and is
//! computed with SHA2(), CONV() and SUM(), which every MariaDB and MySQL
//! has had for a decade.

use navette_proto::v1::{MariadbColumn, MariadbColumnEncoding, MariadbTableChecksum};

use super::client::ident;

/// How a column of `data_type` (information_schema's `DATA_TYPE`) in
/// `charset` (its `CHARACTER_SET_NAME`, empty for non-text) is written.
pub fn encoding_for(data_type: &str, charset: &str) -> MariadbColumnEncoding {
    use MariadbColumnEncoding::{Bits, Hex, Number, Quoted};
    match data_type.to_ascii_lowercase().as_str() {
        "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" | "decimal"
        | "numeric" | "float" | "double" | "real" => Number,
        "bit" => Bits,
        "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" | "geometry"
        | "point" | "linestring" | "polygon" | "multipoint" | "multilinestring"
        | "multipolygon" | "geometrycollection" => Hex,
        "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" => {
            match charset.to_ascii_lowercase().as_str() {
                // Converting these to UTF-8 and back is the identity.
                "utf8mb4" | "utf8mb3" | "utf8" | "ascii" => Quoted,
                // Anything else travels as its bytes.
                _ => Hex,
            }
        }
        // Dates and times, enum, set, year, json, inet6, uuid... as text.
        _ => Quoted,
    }
}

/// The SQL expression of one column's part of the row literal.
fn column_sql(column: &MariadbColumn) -> String {
    let name = ident(&column.name);
    let value = match column.encoding() {
        MariadbColumnEncoding::Number => format!("CAST({name} AS CHAR)"),
        MariadbColumnEncoding::Hex => format!("CONCAT('X''',HEX({name}),'''')"),
        MariadbColumnEncoding::Bits => format!("CONCAT('b''',BIN({name}),'''')"),
        MariadbColumnEncoding::Quoted | MariadbColumnEncoding::Unspecified => {
            format!("QUOTE({name})")
        }
    };
    // Each part in UTF-8 on its own, so parts of different character sets
    // and collations never clash in CONCAT_WS.
    format!("CONVERT(IFNULL({value},'NULL') USING utf8mb4)")
}

/// The SQL expression of a row's literal, `(v1,v2,...)`, in UTF-8.
pub fn row_literal_sql(columns: &[MariadbColumn]) -> String {
    if columns.is_empty() {
        return "'()'".to_owned();
    }
    let parts: Vec<String> = columns.iter().map(column_sql).collect();
    format!(
        "CONVERT(CONCAT('(',CONCAT_WS(',',{}),')') USING utf8mb4)",
        parts.join(",")
    )
}

/// The column list of an INSERT, `` (`a`,`b`) ``.
pub fn insert_columns(columns: &[MariadbColumn]) -> String {
    let names: Vec<String> = columns.iter().map(|c| ident(&c.name)).collect();
    format!("({})", names.join(","))
}

/// A SELECT of the row count and checksum of `database`.`table`: one row,
/// two fields.
pub fn checksum_sql(database: &str, table: &str, columns: &[MariadbColumn]) -> String {
    format!(
        "SELECT COUNT(*),COALESCE(SUM(CAST(CONV(LEFT(SHA2({},256),16),16,10) AS UNSIGNED)),0) FROM {}.{}",
        row_literal_sql(columns),
        ident(database),
        ident(table)
    )
}

/// Parses a checksum as the server prints a DECIMAL sum ("123", "123.0").
pub fn parse_checksum(text: &str) -> Option<u128> {
    let whole = text.trim().split('.').next()?;
    whole.parse().ok()
}

/// The checksum of rows as they go by.
#[derive(Clone, Debug, Default)]
pub struct RowChecksum {
    rows: u64,
    sum: u128,
}

impl RowChecksum {
    /// Adds one row literal (as the server produced it, unescaped).
    pub fn add(&mut self, literal: &[u8]) {
        let digest = ring::digest::digest(&ring::digest::SHA256, literal);
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest.as_ref()[..8]);
        self.rows += 1;
        self.sum = self.sum.wrapping_add(u128::from(u64::from_be_bytes(first)));
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub fn finish(&self, table: &str, columns: &[MariadbColumn]) -> MariadbTableChecksum {
        MariadbTableChecksum {
            table: table.to_owned(),
            rows: self.rows,
            checksum: self.sum.to_string(),
            columns: columns.to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(name: &str, encoding: MariadbColumnEncoding) -> MariadbColumn {
        MariadbColumn {
            name: name.to_owned(),
            encoding: encoding.into(),
        }
    }

    #[test]
    fn encodings_follow_type_and_character_set() {
        use MariadbColumnEncoding::*;
        assert_eq!(encoding_for("int", ""), Number);
        assert_eq!(encoding_for("DECIMAL", ""), Number);
        assert_eq!(encoding_for("varchar", "utf8mb4"), Quoted);
        assert_eq!(encoding_for("varchar", "latin1"), Hex);
        assert_eq!(encoding_for("longblob", ""), Hex);
        assert_eq!(encoding_for("bit", ""), Bits);
        assert_eq!(encoding_for("datetime", ""), Quoted);
        assert_eq!(encoding_for("enum", "latin1"), Quoted);
        assert_eq!(encoding_for("inet6", ""), Quoted);
    }

    #[test]
    fn the_row_literal_is_built_column_by_column() {
        let columns = [
            column("id", MariadbColumnEncoding::Number),
            column("we`ird", MariadbColumnEncoding::Hex),
        ];
        assert_eq!(
            row_literal_sql(&columns),
            "CONVERT(CONCAT('(',CONCAT_WS(',',\
             CONVERT(IFNULL(CAST(`id` AS CHAR),'NULL') USING utf8mb4),\
             CONVERT(IFNULL(CONCAT('X''',HEX(`we``ird`),''''),'NULL') USING utf8mb4)\
             ),')') USING utf8mb4)"
        );
        assert_eq!(insert_columns(&columns), "(`id`,`we``ird`)");
        assert_eq!(row_literal_sql(&[]), "'()'");
    }

    #[test]
    fn the_checksum_ignores_row_order() {
        let mut one = RowChecksum::default();
        one.add(b"(1,'a')");
        one.add(b"(2,'b')");
        let mut other = RowChecksum::default();
        other.add(b"(2,'b')");
        other.add(b"(1,'a')");
        let columns = [column("id", MariadbColumnEncoding::Number)];
        assert_eq!(one.finish("t", &columns), other.finish("t", &columns));
        assert_eq!(one.rows(), 2);
        assert_eq!(RowChecksum::default().finish("t", &[]).checksum, "0");
    }

    #[test]
    fn printed_sums_parse() {
        assert_eq!(
            parse_checksum("36893488147419103230"),
            Some(36893488147419103230)
        );
        assert_eq!(parse_checksum("12.0"), Some(12));
        assert_eq!(parse_checksum("x"), None);
    }
}
